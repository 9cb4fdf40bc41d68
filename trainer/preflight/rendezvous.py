"""Finding rank 0 with plain sockets: DNS, the port, and a hello from every rank.

Rank 0 listens where accelerate will listen (the wildcard address, `SO_REUSEADDR` as torch's
TCPStore does) and waits until ranks 1..N-1 have said hello; then it tells each of them to go
on. A rank that cannot reach rank 0 reports first: rank 0 waits `RANK0_GRACE` seconds longer.

Every wait says, each `report_every` seconds (30), what it is still waiting for: a rank the name
of rank 0 that does not resolve or the port that does not answer yet, rank 0 the ranks that have
not said hello. On an autoscaled pool a pod can wait here for a node being provisioned and a
multi-GB image pull, which is why the chart's default timeout is long.

This module holds what every rank shares (the rendezvous, DNS, the wire's lines); rank 0's side is
`rank0.py` (listen, gather the hellos), the other ranks' `join.py` (connect, say hello, wait for GO).
"""

from __future__ import annotations

import errno
import re
import socket
import time
from dataclasses import dataclass

from trainer.preflight import PreflightError, say

MAGIC = "KUBETUNE-PREFLIGHT/1"
HELLO = re.compile(rf"^{re.escape(MAGIC)} job=(\S*) rank=(\d+) nodes=(\d+)$")
CONNECT_ATTEMPT = 2.0  # seconds per connection attempt of a rank to rank 0
RETRY_PAUSE = 0.5  # between attempts (DNS and connections)
REPLY_WAIT = 10.0  # a listener that has not answered a hello by then is not rank 0's preflight
HELLO_WAIT = 5.0  # rank 0 drops a connection that has not said hello by then
RANK0_GRACE = 5.0
REPORT_EVERY = 30.0  # seconds between the lines that say what a wait still waits for
GROUP_TIMEOUT = 300.0  # once every rank has said hello, forming the process group takes seconds, not the full wait
UNREACHABLE = (errno.EHOSTUNREACH, errno.ENETUNREACH)

Address = tuple[int, tuple]  # (address family, sockaddr)


@dataclass(frozen=True)
class Rendezvous:
    job: str  # the Job's name (KUBETUNE_JOB_NAME), for the kubectl hints
    host: str  # rank 0's address as the pods know it: `<job>-0.<service>` or an IP
    port: int
    nodes: int
    timeout: float  # seconds the ranks wait for each other to show up (node provisioning, image pulls)
    report_every: float = REPORT_EVERY

    @property
    def group_timeout(self) -> float:
        """Seconds to form the process group, when every rank has already said hello to rank 0."""
        return min(self.timeout, GROUP_TIMEOUT)

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def pods_hint(self, extra: str = "") -> str:
        return f"`kubectl get pods -l kubetune.dev/submission={self.job}{extra}`"

    def log_hint(self, rank: int) -> str:
        index = f"batch.kubernetes.io/job-completion-index={rank}"
        return f"`kubectl logs -l kubetune.dev/submission={self.job},{index} -c preflight`"


class Waiting:
    """A wait until `deadline` that says, each `rdv.report_every` seconds, what it is still waiting for."""

    def __init__(self, rdv: Rendezvous, deadline: float):
        self.rdv, self.deadline = rdv, deadline
        self.started = time.monotonic()
        self.next = self.started + rdv.report_every

    def tick(self, what: str) -> None:
        """Say `what` (and how long so far, how long left) when a report is due."""
        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + self.rdv.report_every
        say(f"{what} ({now - self.started:.0f} s so far, giving up in {max(0.0, self.deadline - now):.0f} s)")


def _service_of(host: str) -> str | None:
    """`job-0.job` or `job-0.job.ns.svc.cluster.local` -> `job` (the headless Service, the pods' subdomain)."""
    labels = host.split(".")
    return labels[1] if len(labels) >= 2 and not _is_ip(host) else None


def _is_ip(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
            return True
        except OSError:
            continue
    return False


def resolve(rdv: Rendezvous, deadline: float) -> list[Address]:
    """Rank 0's addresses, retrying DNS until `deadline` (the record appears once the pod has an IP)."""
    waiting = Waiting(rdv, deadline)
    while True:
        try:
            infos = socket.getaddrinfo(rdv.host, rdv.port, type=socket.SOCK_STREAM)
            return list(dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in infos))
        except socket.gaierror as e:
            last = e.strerror or str(e)
        if time.monotonic() >= deadline:
            raise PreflightError(_unresolved(rdv, last))
        waiting.tick(
            f"rank 0's address {rdv.host} does not resolve yet ({last}): rank 0's pod has no IP yet: it may still be "
            f"Pending (a node being provisioned); {rdv.pods_hint()} and `launch status {rdv.job}` say why"
        )
        time.sleep(RETRY_PAUSE * 2)


def _unresolved(rdv: Rendezvous, last: str) -> str:
    service = _service_of(rdv.host)
    if service is None:
        return (
            f"rank 0's address {rdv.host!r} did not resolve within {rdv.timeout:.0f} s ({last}): "
            "KUBETUNE_MASTER_ADDR must be rank 0's host name `<job>-0.<service>` or its IP"
        )
    pod = rdv.host.split(".")[0]
    return (
        f"rank 0's address {rdv.host} did not resolve within {rdv.timeout:.0f} s ({last}): it is the host name of "
        f"pod {pod} under the headless Service {service!r}. Check that the Service exists with `clusterIP: None` "
        f"and `publishNotReadyAddresses: true` (`kubectl get service {service} -o yaml`), that the pods' "
        f"`subdomain` is {service!r}, and that the rank-0 pod exists ({rdv.pods_hint()}); "
        "if KUBETUNE_MASTER_ADDR was overridden in the chart's `env`, remove the override"
    )


def read_line(conn: socket.socket, timeout: float) -> str:
    """One line (without the newline), '' on end of stream; socket.timeout when it does not come in time."""
    conn.settimeout(max(timeout, 0.01))
    data = b""
    while not data.endswith(b"\n") and len(data) < 512:
        chunk = conn.recv(1)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", errors="replace").strip()


def send_line(conn: socket.socket, line: str) -> bool:
    try:
        conn.sendall(f"{line}\n".encode())
        return True
    except OSError:
        return False


def peer_ip(sockaddr: tuple) -> str:
    """The peer's IP, an IPv4 one without the `::ffff:` of the dual-stack listener."""
    return str(sockaddr[0]).removeprefix("::ffff:")
