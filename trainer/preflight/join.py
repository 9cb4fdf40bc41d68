"""Ranks 1..N-1's side of the rendezvous (trainer/preflight/rendezvous.py): connect to rank 0 (retried until the
deadline), say hello, and wait for its GO; each failure is worded as what the last attempts met."""

from __future__ import annotations

import select
import socket
import time

from trainer.preflight import PreflightError, say
from trainer.preflight.rendezvous import (
    CONNECT_ATTEMPT,
    HELLO_WAIT,
    MAGIC,
    RANK0_GRACE,
    REPLY_WAIT,
    RETRY_PAUSE,
    UNREACHABLE,
    Address,
    Rendezvous,
    Waiting,
    read_line,
)


def reach(rdv: Rendezvous, rank: int, addresses: list[Address], deadline: float) -> None:
    """Ranks 1..N-1: connect to rank 0 and say hello; returns once rank 0 has heard from every rank."""
    conn = _connect(rdv, addresses, deadline)
    with conn:
        conn.sendall(f"{MAGIC} job={rdv.job} rank={rank} nodes={rdv.nodes}\n".encode())
        try:
            ack = read_line(conn, REPLY_WAIT)
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
                return read_line(conn, until - time.monotonic())
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
