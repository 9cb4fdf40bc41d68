"""`launch submit --local --detach`: the jobs run in a background process of their own, and `launch` returns at once.

`detach` renders each job's manifests and writes its record (launcher/local_jobs.py) here, so a mistake still exits 2
before anything runs; then it starts `python -m launcher.local_detach NAME...` in a new session (no terminal: closing
the shell leaves it running), with its output in the first job's `runner.log`. That runner waits until its pid is in
every record (stdin closed), then runs the jobs one after the other, as `submit --local` does in the foreground, each
job's output in its own `runner.log`. A job cancelled before its turn (`launch cancel`) is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from launcher import local_jobs
from launcher.submission import render
from trainer.spec.errors import KubetuneError


def detach(subs: Sequence[Any], extra_values: Sequence[Path] = ()) -> list[local_jobs.Record]:
    """Records for `subs` and the background runner that runs them, in order; returns the records."""
    recs = [local_jobs.create(sub, render(sub, extra_values), detached=True) for sub in subs]
    env = os.environ | {"KUBETUNE_HOME": str(local_jobs.root().parent)}
    with recs[0].path(local_jobs.RUNNER_LOG).open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "launcher.local_detach", *(r.name for r in recs)],
                                stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=Path.cwd(),
                                start_new_session=True)
    for rec in recs:
        local_jobs.runner(rec, proc.pid)
    assert proc.stdin is not None
    proc.stdin.close()  # the runner may start
    return recs


def run(names: Sequence[str]) -> int:
    """The background runner: each named job in turn; exit 0 when every one succeeded, else the last failure's code."""
    from launcher.local_job import execute

    sys.stdin.read()  # until `detach` has recorded this process as the runner
    code = 0
    for name in names:
        rec = local_jobs.load(name)
        if rec is None:
            continue
        if rec.path(local_jobs.CANCEL).exists():
            local_jobs.Journal(rec).finish("cancelled", 130, "before it started")
            continue
        with rec.path(local_jobs.RUNNER_LOG).open("a", encoding="utf-8") as out:
            out.write(f"job {name}: {rec.nodes} pod(s) on this machine; results in {rec.output_uri}\n")
            out.flush()
            try:
                execute(rec, out)
                out.write(f"job {name} succeeded; results in {rec.output_uri}\n")
            except KubetuneError as e:
                out.write(f"error: {getattr(e, 'message', None) or e}\n")
                code = e.exit_code
            except Exception:
                out.write(traceback.format_exc())
                code = 1
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
