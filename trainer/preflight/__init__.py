"""The rendezvous preflight: the chart's `preflight` init container, run by every pod of a multi-node
job before `accelerate launch`, so that a rendezvous problem fails in seconds with a diagnosis
instead of hanging until the c10d/NCCL timeout (30 minutes by default).

`python -m trainer.preflight --rank R --nodes N --addr HOST --port P --timeout T ...`, in order:

1. every rank resolves rank 0's address, retrying DNS until the deadline (the rank-0 pod's
   record appears only once the pod has an IP: jobset#504);
2. rank 0 checks that the address is its own and listens on the port; the other ranks connect
   (a short timeout per attempt, retried until the deadline) and say hello with their rank, so
   rank 0 knows which ranks never came (`rendezvous.py`, `rank0.py`, `join.py`; no torch);
3. all ranks join a torch.distributed process group on that address and port (gloo; nccl too
   when the pod sees a GPU), all-reduce a known tensor, check the sum, measure the all-reduce
   bandwidth, then destroy the group (`collective.py`);
4. rank 0 checks that the port can be bound again, for accelerate.

`--timeout` bounds the waits of steps 1 and 2, where a rank may wait for another rank's node to be
provisioned and its image pulled (minutes on an autoscaled pool); each wait says every
`--report-every` seconds what it still waits for (rank 0: which ranks have not joined). Step 3
starts once every rank is up, so it gets at most 300 s (`GROUP_TIMEOUT`).

A problem is printed as one `[kubetune] error: preflight: ...` line naming what to check, and
the process exits with 1 (2 for bad arguments).
"""

from __future__ import annotations

from trainer import say as out
from trainer.spec.errors import KubetuneError


class PreflightError(KubetuneError):
    """A diagnosis: what failed, at which address and rank, and what to check."""


def say(message: str) -> None:
    out.say(f"preflight: {message}")


def report(error: PreflightError) -> None:
    out.error(f"preflight: {error}")
