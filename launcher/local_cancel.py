"""`launch cancel NAME` of a local job (launcher/local_jobs.py): SIGTERM to its runner, which stops the pods as on
Ctrl-C (SIGTERM to each pod's process group, SIGKILL after its grace) and records the job cancelled; whatever is
left after GRACE seconds is killed (SIGKILL to the runner and to the pods' process groups) and the record says so.

The runner's process group is signalled when the runner leads one (a `--detach` runner, or `launch submit --local`
started from a shell); else the runner alone, so a shell or a pipeline it shares a group with is left alone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from launcher import local_jobs
from launcher.local_jobs import LIVE, Record

GRACE = 20.0  # seconds: the runner's own grace for the pods (10 s) and some


def _signal(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signum)
        else:
            os.kill(pid, signum)


def cancel(name: str, grace: float = GRACE) -> tuple[Record, bool]:
    """Stop local job `name`; (its record now, whether it was stopped). A job already ended is left as it is."""
    rec = local_jobs.find(name)
    if rec.status not in LIVE:
        return rec, False
    rec.path(local_jobs.CANCEL).write_text(local_jobs.now(), encoding="utf-8")
    if rec.status == "queued":  # not started: its runner skips it
        return rec, True
    assert rec.pid is not None
    _signal(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        now = local_jobs.find(name)
        if now.status not in LIVE:
            return now, True
        time.sleep(0.1)
    return _kill(local_jobs.find(name), grace), True


def _kill(rec: Record, grace: float) -> Record:
    """The runner did not end the job within the grace: SIGKILL to it and to every pod it started."""
    if rec.status not in LIVE:
        return rec
    if local_jobs.alive(rec.pid, rec.pid_start):
        assert rec.pid is not None
        _signal(rec.pid, signal.SIGKILL)
    for pod in rec.pods:
        if pod.get("pid") and pod["phase"] in ("Pending", "Running"):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pod["pid"], signal.SIGKILL)  # each pod leads its own session (local_run.py)
    journal = local_jobs.Journal(local_jobs.load(rec.name) or rec)
    if journal.rec.status in LIVE:
        journal.finish("cancelled", 137, f"SIGKILL: its runner had not stopped within {grace:g}s")
    return local_jobs.current(journal.rec)
