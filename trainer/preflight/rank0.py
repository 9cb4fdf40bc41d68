"""Rank 0's side of the rendezvous (trainer/preflight/rendezvous.py): check that rank 0's address is this pod's,
listen where accelerate will, wait for a hello from each of ranks 1..N-1, tell them all to go on, and at the end
check that accelerate can bind the port again."""

from __future__ import annotations

import contextlib
import errno
import socket
import time

from trainer.preflight import PreflightError, say
from trainer.preflight.rendezvous import (
    HELLO,
    HELLO_WAIT,
    MAGIC,
    RETRY_PAUSE,
    Address,
    Rendezvous,
    Waiting,
    peer_ip,
    read_line,
    send_line,
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
                read_line(conn, HELLO_WAIT)
    finally:
        for conn in joined.values():
            conn.close()


def _welcome(rdv: Rendezvous, conn: socket.socket, peer: tuple, joined: dict[int, socket.socket]) -> int | None:
    """The rank that said hello on `conn`, or None for a connection to drop (not ours, or another job's)."""
    try:
        line = read_line(conn, HELLO_WAIT)
    except OSError:
        line = ""
    m = HELLO.match(line)
    if m is None:
        say(f"dropped a connection from {peer_ip(peer)} that did not say a kubetune preflight hello")
        return None
    job, rank, nodes = m.group(1), int(m.group(2)), int(m.group(3))
    if job != rdv.job:
        say(f"dropped a connection from {peer_ip(peer)}: it is a pod of job {job}, not {rdv.job}")
        send_line(conn, f"ERROR rank 0 at {rdv.where} belongs to job {rdv.job}, not {job}")
        return None
    problem = None
    if nodes != rdv.nodes:
        problem = (
            f"rank {rank} ({peer_ip(peer)}) was told the job has {nodes} nodes, rank 0 was told {rdv.nodes}: "
            "the pods were not rendered from the same values"
        )
    elif not 0 < rank < rdv.nodes:
        problem = f"a pod at {peer_ip(peer)} says it is rank {rank}, outside 1..{rdv.nodes - 1}"
    elif rank in joined:
        problem = f"two pods say they are rank {rank} ({peer_ip(joined[rank].getpeername())} and {peer_ip(peer)})"
    if problem:
        send_line(conn, f"ERROR {problem}")
        conn.close()
        raise PreflightError(problem)
    if not send_line(conn, f"{MAGIC} OK {len(joined) + 2}/{rdv.nodes}"):
        return None  # it left already; if it was a rank, it is missing
    say(f"rank {rank} joined from {peer_ip(peer)} ({len(joined) + 2} of {rdv.nodes})")
    return rank


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
