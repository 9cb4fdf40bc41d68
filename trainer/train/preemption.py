"""Stopping at a step boundary on SIGTERM, the same step on every rank, and telling the pod how it ended.

Kubernetes sends SIGTERM to a pod it preempts, evicts or drains, and SIGKILL after
`terminationGracePeriodSeconds`. Each rank's handler only raises a flag; `StopOnSignal` all-reduces
the flag after every optimizer step, so all ranks see the stop at the same step even when only one
pod was signalled (`trainer.train.resume.StopOnSignal`). The Trainer then writes a checkpoint and returns,
and the process exits with `EXIT_PREEMPTED`. Light (no torch at import): `trainer.train.supervise` uses it.

The exit code reaches Kubernetes through `trainer.train.supervise` (the container's PID 1): `accelerate
launch` and torchrun turn a worker's exit code into 1, so each rank also writes its code into
`$KUBETUNE_EXIT_DIR/rank-<RANK>`, and the supervisor exits with it. The chart's podFailurePolicy
restarts pods that exit with `EXIT_PREEMPTED` without counting a failure, and fails the Job at once
on `EXIT_USER_ERROR`.

Only a pod that was itself told to stop (SIGTERM: preemption, eviction, node drain, cancel) exits
`EXIT_PREEMPTED`, and a job resumes at most `resources.max_restarts` times (`trainer.train.checkpoint`
counts the starts). A collective that fails while this pod was not told to stop (a peer pod
crashed or vanished, an NCCL error, a timeout) exits `EXIT_PEER_LOST`, which the Job counts
against `job.backoffLimit`: a deterministic NCCL failure ends the Job instead of restarting forever.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from trainer import ranks, say
from trainer.spec.exits import EXIT_DIR, EXIT_PEER_LOST, EXIT_PREEMPTED, EXIT_USER_ERROR

__all__ = ["EXIT_DIR", "EXIT_PEER_LOST", "EXIT_PREEMPTED", "EXIT_USER_ERROR"]
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")


class Signals:
    """Remembers that SIGTERM arrived; training looks at it between steps."""

    def __init__(self) -> None:
        self.received: int | None = None

    def install(self) -> Signals:
        signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.received is None:
            say.say(f"{signal.Signals(signum).name}: stopping after this step, with a checkpoint")
        self.received = signum


def peer_lost(error: BaseException) -> bool:
    """A collective failed because another rank is gone (its node lost, its pod killed): retriable."""
    try:
        from torch.distributed import DistError
    except ImportError:  # torch built without distributed
        DistError = ()  # noqa: N806
    return isinstance(error, DistError) or any(m in str(error) for m in PEER_LOST)


def peer_lost_diagnosis(error: BaseException, rank: int | str, job: str | None = None) -> str:
    """The `[kubetune] error:` line of a rank whose collective failed while its pod was not told to stop."""
    first = (str(error).splitlines() or [""])[0][:300]
    job = job or os.environ.get("KUBETUNE_JOB_NAME") or "JOB"
    return (f"rank {rank} lost its peers: {type(error).__name__}: {first}; a peer pod crashed or was deleted, or the "
            f"network (NCCL) failed. Exiting {EXIT_PEER_LOST}, a failure the Job counts against job.backoffLimit; the "
            f"pod that failed first has the cause in its log: launch logs {job} --rank N (N: its node index)")


def release_process_group() -> None:
    """Destroy torch.distributed's process groups once a run is over on every rank (its data prefetch thread
    joined, its last collective done). Left to the interpreter's exit, gloo's teardown aborts the process now
    and then ("terminate called without an active exception", SIGABRT) and NCCL's warns; the pod's exit code
    would then say 1, not the run's own. First every rank meets the others: rank 0 still writes the outputs when
    the others are done, and a rank that tore its communicator down while a peer's was still live aborted the
    same way. Not after a lost peer, nor when that meeting fails: a communicator may not be torn down alone.

    On gloo the meeting is an all-reduce whose work object Python holds until the process ends, not a barrier.
    A gloo collective's work object holds its tensors, and a gloo worker thread that drops the last C++
    reference to a tensor Python also knows takes the GIL (torch 2.13: `decref_pyobject`, even when Python
    still holds the tensor); if the interpreter is exiting by then, the thread is ended inside a destructor
    and the process aborts (core dumps of 2-rank ZeRO-3 CPU runs: the final barrier's work, which also kept
    alive the gather that had just returned before it, and with a plain all-reduce that one's work). Held
    here, the final work is freed by the exiting interpreter on the main thread, and the worker only drops
    its reference. The earlier collectives' works are freed during its round trip, while the main thread
    waits without the GIL. The groups DeepSpeed still holds (the ZeRO-3 parameters, its engine) outlive
    `destroy_process_group`, their threads with them."""
    import torch
    import torch.distributed as dist  # here: this module stays light (trainer.train.supervise imports it)

    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if dist.get_backend() == "gloo":
            work = dist.all_reduce(torch.zeros(1), async_op=True)
            work.wait()
            _HELD.append(work)
        else:
            dist.barrier()
    except Exception:  # a peer failed after all: its pod's exit code says so; this one leaves gloo as it is
        return
    dist.destroy_process_group()


_HELD: list[Any] = []  # release_process_group's final work: freed by the interpreter's exit, not by a gloo thread


def report_exit(code: int) -> None:
    """Tell the supervisor this rank's exit code (accelerate launch would turn it into 1)."""
    folder = os.environ.get(EXIT_DIR)
    if folder:
        path = Path(folder) / f"rank-{ranks.rank()}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"{code}\n", encoding="utf-8")
