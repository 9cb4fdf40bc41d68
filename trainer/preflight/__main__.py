"""`python -m trainer.preflight`: the chart's init container (see the package docstring).

Every argument but `--report-every` is required: the chart's values (`job.*`, `preflight.*`) are
where the defaults live.
"""

from __future__ import annotations

import argparse
import sys
import time

from trainer.preflight import PreflightError, report, say
from trainer.preflight.join import reach
from trainer.preflight.rank0 import check_own_address, gather, listen, port_reusable
from trainer.preflight.rendezvous import RANK0_GRACE, REPORT_EVERY, Rendezvous, resolve

BACKENDS = ("auto", "gloo", "nccl")
PORT_RELEASE_WAIT = 10.0


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer.preflight", description=__doc__)
    p.add_argument("--job", required=True, help="the Job's name (KUBETUNE_JOB_NAME), for the kubectl hints")
    p.add_argument("--rank", required=True, help="this pod's rank (JOB_COMPLETION_INDEX)")
    p.add_argument("--nodes", required=True, help="pods in the job (KUBETUNE_NUM_NODES)")
    p.add_argument("--addr", required=True, help="rank 0's address (KUBETUNE_MASTER_ADDR)")
    p.add_argument("--port", required=True, help="the rendezvous port (job.port)")
    p.add_argument("--timeout", required=True, help="seconds to wait for the other ranks, per stage")
    p.add_argument("--backend", required=True, help="auto | gloo | nccl (preflight.backend)")
    p.add_argument("--size-mib", required=True, help="all-reduce size for the bandwidth, 0 to skip")
    p.add_argument("--report-every", default=str(int(REPORT_EVERY)),
                   help="seconds between the lines that say what a wait still waits for (default %(default)s)")
    return p.parse_args(argv)


def _int(args: argparse.Namespace, name: str, low: int, high: int, what: str) -> int:
    raw = getattr(args, name.replace("-", "_"))
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise PreflightError(f"--{name} is {raw!r}: it must be an integer from {low} to {high} ({what})")
    return value


def rendezvous_and_rank(args: argparse.Namespace) -> tuple[Rendezvous, int, str, int]:
    """The validated arguments; every problem names the argument and where its value comes from."""
    nodes = _int(args, "nodes", 1, 100_000, "KUBETUNE_NUM_NODES, the chart's job.nodes")
    rank = _int(args, "rank", 0, nodes - 1, "JOB_COMPLETION_INDEX, set by an Indexed Job")
    port = _int(args, "port", 1, 65535, "the chart value job.port")
    timeout = _int(args, "timeout", 1, 86_400, "the chart value preflight.timeoutSeconds")
    size_mib = _int(args, "size-mib", 0, 65_536, "the chart value preflight.allReduceMiB")
    report_every = _int(args, "report-every", 1, 3600, "seconds between progress lines")
    if args.backend not in BACKENDS:
        raise PreflightError(f"--backend is {args.backend!r}: use one of {', '.join(BACKENDS)} (preflight.backend)")
    if not args.addr or args.addr.startswith("$("):
        raise PreflightError(f"--addr is {args.addr!r}: set KUBETUNE_MASTER_ADDR to rank 0's host name")
    rdv = Rendezvous(args.job, args.addr, port, nodes, float(timeout), float(report_every))
    return rdv, rank, args.backend, size_mib


def run(rdv: Rendezvous, rank: int, backend: str, size_mib: int) -> None:
    started = time.monotonic()
    deadline = started + rdv.timeout
    say(f"rank {rank} of {rdv.nodes}: looking for rank 0 at {rdv.where} (timeout {rdv.timeout:.0f} s)")
    addresses = resolve(rdv, deadline)
    if rank == 0:
        check_own_address(rdv, addresses)
        listener = listen(rdv.port, backlog=max(16, rdv.nodes))
        with listener:
            gather(rdv, listener, deadline + RANK0_GRACE)
    else:
        reach(rdv, rank, addresses, deadline)

    from trainer.preflight import collective  # torch: only once the ranks have found each other

    collective.check(rdv, rank, backend, size_mib, started)
    freed = ""
    if rank == 0:
        port_reusable(rdv.port, PORT_RELEASE_WAIT)
        freed = f"; port {rdv.port} is free again for accelerate"
    say(f"rank {rank} ok in {time.monotonic() - started:.1f}s{freed}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    try:
        rdv, rank, backend, size_mib = rendezvous_and_rank(args)
    except PreflightError as e:
        report(e)
        return 2
    try:
        run(rdv, rank, backend, size_mib)
    except PreflightError as e:
        report(e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
