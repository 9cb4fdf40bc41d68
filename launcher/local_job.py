"""A submission run on this machine (`launch submit --local`): each pod of its Job a local process
(launcher/backends/local.py plans them, local_run.py runs them), then the export's, with the job's record kept
(launcher/local_jobs.py); here and now, or in the background (`--detach`, launcher/local_detach.py); the simulated
preemption (KUBETUNE_LOCAL_SIGTERM), why a failed run failed, and where a finished run's results are."""

from __future__ import annotations

import os
import re
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING

from launcher import helm, local_jobs, resolve
from launcher.errors import PodFailed, UserError
from launcher.submission import Submission, render
from trainer.spec.errors import KubetuneError
from trainer.spec.exits import EXIT_PREEMPTED

if TYPE_CHECKING:
    from launcher.backends.local import PodProcess
    from launcher.backends.local_run import Outcome

PROGRESS_FILE = "KUBETUNE_PROGRESS_FILE"  # trainer/tracking/progress.py FILE_ENV


def local_preemption() -> tuple[int, re.Pattern[str]] | None:
    """`KUBETUNE_LOCAL_SIGTERM=RANK:REGEX`: SIGTERM to pod RANK when its log matches REGEX (a simulated
    preemption, for tests and for trying out resuming; launcher/backends/local_run.py)."""
    value = os.environ.get("KUBETUNE_LOCAL_SIGTERM")
    if not value:
        return None
    rank, sep, pattern = value.partition(":")
    try:
        if not (sep and rank.isdigit()):
            raise ValueError("not RANK:REGEX")
        return int(rank), re.compile(pattern)
    except (ValueError, re.error) as e:
        raise UserError(f"KUBETUNE_LOCAL_SIGTERM={value!r}: {e}; write RANK:REGEX, e.g. 0:\\[train\\] step 7/") from None


def run_local(sub: Submission, out: IO[str] | None = None, extra_values: Sequence[Path] = ()) -> None:
    """Render the chart and run each pod of its Job as a local process, here and now (the record, in
    launcher/local_jobs.py, lets other terminals follow it); raises PodFailed on failure."""
    rec = local_jobs.create(sub, render(sub, extra_values))
    local_jobs.runner(rec, os.getpid())
    execute(rec, out or sys.stdout)


def execute(rec: local_jobs.Record, out: IO[str]) -> None:
    """Run the recorded job's pods (training, then the export), keeping its record; raises PodFailed on failure."""
    journal = local_jobs.Journal(rec)
    try:
        _phases(rec, journal, out)
    except KubetuneError as e:
        stopped = isinstance(e, PodFailed) and e.exit_code == 130  # a signal: Ctrl-C, or `launch cancel`'s SIGTERM
        journal.finish("cancelled" if stopped else "failed", e.exit_code,
                       None if stopped and journal.cancelled else getattr(e, "message", None) or str(e))
        raise
    except BaseException as e:
        journal.finish("failed", 1, f"the local runner stopped: {type(e).__name__}: {e}")
        raise
    journal.finish("succeeded", 0)


def _phases(rec: local_jobs.Record, journal: local_jobs.Journal, out: IO[str]) -> None:
    from launcher.backends.local import plan
    from launcher.backends.local_run import LocalRun

    manifests = helm.parse_manifests(rec.path(local_jobs.MANIFESTS).read_text(encoding="utf-8"))
    preempt = local_preemption()
    with tempfile.TemporaryDirectory(prefix=f"kubetune-{rec.name}-") as tmp:
        pods = plan(manifests, Path(tmp) / "training", cwd=Path.cwd())
        _progress_env(pods, rec.progress_file("training"))
        journal.begin("training")
        outcome = LocalRun(pods, out=out, preempt=preempt, journal=journal).run()
        _raise_on_failure(rec, outcome, "")
        if rec.export:  # suspended until training succeeded: on a cluster rank 0 starts it, here we do
            pods = plan(manifests, Path(tmp) / "export", cwd=Path.cwd(), component="export")
            _progress_env(pods, rec.progress_file("export"))
            journal.begin("export")
            outcome = LocalRun(pods, out=out, label="export", journal=journal).run()
            _raise_on_failure(rec, outcome, _verify_reports(rec.output_uri))


def _verify_reports(output: str) -> str:
    """The gate's reports of a failed export: the merged GGUFs' and the adapter GGUFs' (those written, when local)."""
    names = ["verify.txt", "verify-adapters.txt"]
    if "://" not in output:
        names = [n for n in names if (Path(output) / "export" / n).is_file()] or names[:1]
    return "".join(f"\n  the verification report: {output.rstrip('/')}/export/{n}" for n in names)


def _progress_env(pods: list[PodProcess], path: Path) -> None:
    """Where the pods publish their live progress (trainer/tracking/progress.py): a file `launch status` reads."""
    for pod in pods:
        pod.env[PROGRESS_FILE] = str(path)


def _raise_on_failure(rec: local_jobs.Record, outcome: Outcome, report: str) -> None:
    name = rec.name
    if outcome.signal is not None:
        raise PodFailed(f"job {name}: stopped by {signal.Signals(outcome.signal).name}", exit_code=130)
    if outcome.first_failure is not None and outcome.codes[outcome.first_failure] == EXIT_PREEMPTED:
        raise PodFailed(
            f"job {name}: stopped after SIGTERM at a step boundary, with a checkpoint in "
            f"{rec.output_uri}/checkpoints; continue it with: launch submit --local --resume {name} "
            f"{rec.spec_path}", exit_code=EXIT_PREEMPTED,
        )
    if outcome.first_failure is not None:
        rank = outcome.first_failure
        stopped = f"; stopped rank(s) {', '.join(map(str, outcome.stopped))}" if outcome.stopped else ""
        cause = f"\n  {outcome.errors[rank]}" if rank in outcome.errors else ""
        raise PodFailed(
            f"job {name}: {outcome.who(rank)} exited with code {outcome.codes[rank]}{stopped}{cause}{report}"
        )
    if not outcome.ok:
        raise PodFailed(f"job {name}: pods ended with exit codes {outcome.codes}{report}")


def result_lines(sub: Submission) -> list[str]:
    """Where a finished job's results are, read from its `_SUCCESS` marker when the output is local."""
    uri = sub.spec.output.uri or ""
    marker = Path(uri) / "_SUCCESS"
    if resolve.is_remote(uri) or not marker.is_file():
        return [f"results: {uri}"]
    import json

    done = json.loads(marker.read_text(encoding="utf-8"))
    lines = [
        f"adapter:    {Path(uri) / 'adapter'}",
        f"MLflow run: {done.get('run_id')} ({done.get('tracking_uri')})",
        f"steps:      {done.get('steps')}, final loss {done.get('final_loss')}",
    ]
    if done.get("tokens_per_second") is not None:  # the trainer's rates (trainer/tracking/speed.py)
        mfu = f", MFU {done['mfu']:.1%}" if done.get("mfu") is not None else ", MFU not known (see the training log)"
        lines.append(f"speed:      {done['tokens_per_second']:,.0f} trained tokens/s{mfu}")
    tracking = str(done.get("tracking_uri") or "")
    if tracking.startswith("sqlite:///"):
        lines.append(f"browse it:  mlflow ui --backend-store-uri {tracking}")
    return lines
