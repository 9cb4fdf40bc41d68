"""Finding rank 0 with plain sockets: DNS, the port, and a hello from every rank.

Rank 0 listens where accelerate will listen (the wildcard address, `SO_REUSEADDR` as torch's
TCPStore does) and waits until ranks 1..N-1 have said hello; then it tells each of them to go
on. A rank that cannot reach rank 0 reports first: rank 0 waits `RANK0_GRACE` seconds longer.

Every wait says, each `report_every` seconds (30), what it is still waiting for: a rank the name
of rank 0 that does not resolve or the port that does not answer yet, rank 0 the ranks that have
not said hello. On an autoscaled pool a pod can wait here for a node being provisioned and a
multi-GB image pull, which is why the chart's default timeout is long.
"""

from __future__ import annotations

import contextlib
import errno
import re
import select
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


def _is_local(address: Address) -> bool:
    family, sockaddr = address
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((sockaddr[0], 0, *sockaddr[2:]))
        except OSError as e:
            if e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                return False
            raise
    return True


def check_own_address(rdv: Rendezvous, addresses: list[Address]) -> None:
    """Rank 0: the address the other ranks will dial must be one of this pod's."""
    if any(_is_local(a) for a in addresses):
        return
    ips = ", ".join(sorted({a[1][0] for a in addresses}))
    raise PreflightError(
        f"rank 0's address {rdv.host} is {ips}, which is not an address of this pod (rank 0): the other ranks "
        "would wait at the wrong host. KUBETUNE_MASTER_ADDR must name the rank-0 pod (`<job>-0.<service>`); "
        "remove any override of it in the chart's `env`"
    )


def listen(port: int, backlog: int = 16) -> socket.socket:
    """Rank 0: listen on `port` on every address, as torch's TCPStore will."""
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 in this pod
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind((host, port))
            s.listen(backlog)
            return s
        except OSError as e:
            s.close()
            if e.errno == errno.EADDRINUSE:
                raise PreflightError(port_in_use(port)) from None
            if family == socket.AF_INET6 and e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                continue
            raise PreflightError(f"rank 0 cannot listen on port {port}: {e.strerror or e}") from None
    raise PreflightError(f"rank 0 cannot listen on port {port}: no IPv4 or IPv6 socket could be opened")


def port_in_use(port: int) -> str:
    return (
        f"port {port} is already in use on rank 0's pod, so the rendezvous cannot listen there: another process "
        f"in the pod's network namespace holds it (a sidecar, the node itself with hostNetwork, or on this machine "
        f"any process: `ss -ltnp 'sport = :{port}'` shows which). Set another port with the chart value `job.port`"
    )


def port_reusable(port: int, wait: float) -> None:
    """Rank 0 at the end: accelerate must be able to bind the port right after the preflight released it."""
    deadline = time.monotonic() + wait
    while True:
        try:
            listen(port).close()
            return
        except PreflightError:
            if time.monotonic() >= deadline:
                raise PreflightError(
                    f"port {port} is still held {wait:.0f} s after the preflight released it: accelerate could not "
                    "listen there; set another port with the chart value `job.port`"
                ) from None
            time.sleep(RETRY_PAUSE)


def _readline(conn: socket.socket, timeout: float) -> str:
    """One line (without the newline), '' on end of stream; socket.timeout when it does not come in time."""
    conn.settimeout(max(timeout, 0.01))
    data = b""
    while not data.endswith(b"\n") and len(data) < 512:
        chunk = conn.recv(1)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", errors="replace").strip()


def gather(rdv: Rendezvous, listener: socket.socket, deadline: float) -> None:
    """Rank 0: wait for a hello from each of ranks 1..N-1, then tell them all to go on."""
    joined: dict[int, socket.socket] = {}
    waiting = Waiting(rdv, deadline)
    try:
        while len(joined) < rdv.nodes - 1:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise PreflightError(_missing(rdv, joined))
            waiting.tick(_still_missing(rdv, joined))
            listener.settimeout(min(remaining, 1.0))
            try:
                conn, peer = listener.accept()
            except TimeoutError:
                continue
            rank = _welcome(rdv, conn, peer, joined)
            if rank is None:
                conn.close()
            else:
                joined[rank] = conn
        for rank, conn in joined.items():
            try:
                conn.sendall(b"GO\n")
            except OSError:
                raise PreflightError(
                    f"rank {rank} dropped its connection to rank 0 before every rank joined: its log says why "
                    f"({rdv.log_hint(rank)})"
                ) from None
        for conn in joined.values():  # they close first: the TIME_WAIT is theirs, not on our port
            with contextlib.suppress(OSError):
                _readline(conn, HELLO_WAIT)
    finally:
        for conn in joined.values():
            conn.close()


def _welcome(rdv: Rendezvous, conn: socket.socket, peer: tuple, joined: dict[int, socket.socket]) -> int | None:
    """The rank that said hello on `conn`, or None for a connection to drop (not ours, or another job's)."""
    try:
        line = _readline(conn, HELLO_WAIT)
    except OSError:
        line = ""
    m = HELLO.match(line)
    if m is None:
        say(f"dropped a connection from {_ip(peer)} that did not say a kubetune preflight hello")
        return None
    job, rank, nodes = m.group(1), int(m.group(2)), int(m.group(3))
    if job != rdv.job:
        say(f"dropped a connection from {_ip(peer)}: it is a pod of job {job}, not {rdv.job}")
        _send(conn, f"ERROR rank 0 at {rdv.where} belongs to job {rdv.job}, not {job}")
        return None
    problem = None
    if nodes != rdv.nodes:
        problem = (
            f"rank {rank} ({_ip(peer)}) was told the job has {nodes} nodes, rank 0 was told {rdv.nodes}: "
            "the pods were not rendered from the same values"
        )
    elif not 0 < rank < rdv.nodes:
        problem = f"a pod at {_ip(peer)} says it is rank {rank}, outside 1..{rdv.nodes - 1}"
    elif rank in joined:
        problem = f"two pods say they are rank {rank} ({_ip(joined[rank].getpeername())} and {_ip(peer)})"
    if problem:
        _send(conn, f"ERROR {problem}")
        conn.close()
        raise PreflightError(problem)
    if not _send(conn, f"{MAGIC} OK {len(joined) + 2}/{rdv.nodes}"):
        return None  # it left already; if it was a rank, it is missing
    say(f"rank {rank} joined from {_ip(peer)} ({len(joined) + 2} of {rdv.nodes})")
    return rank


def _send(conn: socket.socket, line: str) -> bool:
    try:
        conn.sendall(f"{line}\n".encode())
        return True
    except OSError:
        return False


def _missing(rdv: Rendezvous, joined: dict[int, socket.socket]) -> str:
    missing = [r for r in range(1, rdv.nodes) if r not in joined]
    listed = ", ".join(map(str, missing))
    return (
        f"rank(s) {listed} never joined within {rdv.timeout:.0f} s ({len(joined) + 1} of {rdv.nodes} ranks here, "
        f"rank 0 listening at {rdv.where}): is pod {missing[0]} Pending or failing? {rdv.pods_hint()}, then "
        f"`kubectl describe pod` for its events and {rdv.log_hint(missing[0])} for its own diagnosis"
    )


def _still_missing(rdv: Rendezvous, joined: dict[int, socket.socket]) -> str:
    missing = [r for r in range(1, rdv.nodes) if r not in joined]
    shown = ", ".join(map(str, missing[:16])) + (f" and {len(missing) - 16} more" if len(missing) > 16 else "")
    return (
        f"rank 0 waiting for rank(s) {shown} ({len(joined) + 1} of {rdv.nodes} ranks here): their pods may still be "
        f"Pending (nodes being provisioned) or pulling the image; {rdv.pods_hint()} and `launch status {rdv.job}` "
        "say why"
    )


def reach(rdv: Rendezvous, rank: int, addresses: list[Address], deadline: float) -> None:
    """Ranks 1..N-1: connect to rank 0 and say hello; returns once rank 0 has heard from every rank."""
    conn = _connect(rdv, addresses, deadline)
    with conn:
        conn.sendall(f"{MAGIC} job={rdv.job} rank={rank} nodes={rdv.nodes}\n".encode())
        try:
            ack = _readline(conn, REPLY_WAIT)
        except OSError:
            ack = ""
        if ack.startswith("ERROR "):
            raise PreflightError(ack.removeprefix("ERROR "))
        if not ack.startswith(f"{MAGIC} OK"):
            raise PreflightError(
                f"something at {rdv.where} accepted the connection but did not answer as rank 0's preflight within "
                f"{REPLY_WAIT:.0f} s: another service listens on that port or KUBETUNE_MASTER_ADDR names another "
                "host; check the chart value `job.port` and any override of KUBETUNE_MASTER_ADDR in `env`"
            )
        say(f"reached rank 0 at {rdv.where}; waiting for the other ranks")
        go = _await_go(rdv, conn, deadline + RANK0_GRACE + HELLO_WAIT)
        if go is None:
            raise PreflightError(
                f"rank 0 at {rdv.where} accepted this rank, but not every rank joined within {rdv.timeout:.0f} s: "
                f"rank 0's log names the missing ones ({rdv.log_hint(0)})"
            )
        if go != "GO":
            reason = go.removeprefix("ERROR ") if go else "it closed the connection"
            raise PreflightError(
                f"rank 0 at {rdv.where} ended the rendezvous ({reason}): its log says why ({rdv.log_hint(0)})"
            )


def _await_go(rdv: Rendezvous, conn: socket.socket, until: float) -> str | None:
    """Rank 0's word once every rank has joined ('GO', an ERROR, '' when it closed); None when none came in time."""
    waiting = Waiting(rdv, until)
    while (left := until - time.monotonic()) > 0:
        try:
            ready, _, _ = select.select([conn], [], [], min(left, rdv.report_every, 1.0))
        except (OSError, ValueError):
            return ""
        if ready:
            try:
                return _readline(conn, until - time.monotonic())
            except OSError:
                return None
        waiting.tick(f"joined rank 0, which still waits for other ranks (its log names them: {rdv.log_hint(0)})")
    return None


def _connect(rdv: Rendezvous, addresses: list[Address], deadline: float) -> socket.socket:
    """A connection to rank 0, retried until `deadline`; the diagnosis names what the last attempts met."""
    failure = "refused"
    waiting = Waiting(rdv, deadline)
    while True:
        for family, sockaddr in addresses:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(CONNECT_ATTEMPT)
            try:
                s.connect(sockaddr)
                return s
            except ConnectionRefusedError:
                failure = "refused"
            except TimeoutError:
                failure = "timeout"
            except OSError as e:
                failure = "unreachable" if e.errno in UNREACHABLE else (e.strerror or str(e))
            s.close()
        if time.monotonic() >= deadline:
            raise PreflightError(_unreachable(rdv, addresses, failure))
        waiting.tick(
            f"rank 0 at {rdv.where} does not answer yet (connection {failure}): its preflight has not started: its "
            f"pod may still be Pending (a node being provisioned) or pulling the image; {rdv.pods_hint()} and "
            f"`launch status {rdv.job}` say why"
        )
        time.sleep(RETRY_PAUSE)


def _unreachable(rdv: Rendezvous, addresses: list[Address], failure: str) -> str:
    ips = ", ".join(sorted({a[1][0] for a in addresses}))
    at = f"rank 0 at {rdv.where} ({ips})" if ips != rdv.host else f"rank 0 at {rdv.where}"
    if failure == "refused":
        return (
            f"{at} refused connections for {rdv.timeout:.0f} s: nothing listens on port {rdv.port} there. Did rank 0 "
            f"start ({rdv.pods_hint()}; its log: {rdv.log_hint(0)})? Is the port right (chart value `job.port`) and "
            "open to the other pods (a NetworkPolicy that rejects it)?"
        )
    if failure == "timeout":
        return (
            f"connections to {at} timed out for {rdv.timeout:.0f} s: packets to port {rdv.port} are dropped. "
            "A NetworkPolicy that does not allow the job's pods to reach each other, or KUBETUNE_MASTER_ADDR "
            f"pointing at a host that is not rank 0 ({rdv.pods_hint(' -o wide')} shows rank 0's IP)"
        )
    if failure == "unreachable":
        return f"there is no route to {at}: KUBETUNE_MASTER_ADDR points at a host this pod cannot reach"
    return f"cannot connect to {at} within {rdv.timeout:.0f} s: {failure}"


def _ip(sockaddr: tuple) -> str:
    """The peer's IP, an IPv4 one without the `::ffff:` of the dual-stack listener."""
    return str(sockaddr[0]).removeprefix("::ffff:")
