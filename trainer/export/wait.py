"""The export job's first step: wait for its own training run's marker, `_SUCCESS` to go on, `_FAILED` to stop
(trainer/export/run.py)."""

from __future__ import annotations

import json
import time
from typing import Any

from trainer import storage
from trainer.export import say
from trainer.export.errors import ExportError


def _marker(uri: str) -> dict[str, Any] | None:
    if not storage.exists(uri):
        return None
    try:
        found = json.loads(storage.read_text(uri))
    except (json.JSONDecodeError, FileNotFoundError):
        return None  # being written, or removed meanwhile: look again at the next poll
    return found if isinstance(found, dict) else None


WAIT_LOG_SECONDS = 300  # while waiting for training: one line this often


def wait_for_success(output: str, minutes: float, poll_seconds: float = 10.0, job: str | None = None) -> dict[str, Any]:
    """Training's `_SUCCESS` marker (JSON) once it exists; ExportError when training wrote `_FAILED` instead,
    or after `minutes` (0: no deadline; export.wait_minutes). With `job` (the submission's name,
    KUBETUNE_JOB_NAME), markers of other submissions to the same output (an earlier run's) are not taken for
    this one's. Says every few minutes that it is still waiting."""
    success, failed = storage.join(output, "_SUCCESS"), storage.join(output, "_FAILED")
    started = time.monotonic()
    deadline = started + minutes * 60 if minutes > 0 else None
    next_line = started
    while True:
        for uri in (success, failed):
            found = _marker(uri)
            if found is None or (job and found.get("job_name") not in (None, job)):
                continue
            if uri == failed:
                raise ExportError(f"training failed ({found.get('error') or 'see its logs'}): nothing to export; "
                                  f"{failed} says so")
            return found
        now = time.monotonic()
        if deadline is not None and now > deadline:
            raise ExportError(f"no {success} after {minutes:g} min: training did not finish (see its logs), or "
                              "raise export.wait_minutes (0: no deadline)")
        if now >= next_line:
            waited = f" ({(now - started) / 60:.0f} min so far)" if now > started else ""
            say(f"waiting for {success}" + (f" of {job}" if job else "") + waited)
            next_line = now + WAIT_LOG_SECONDS
        time.sleep(poll_seconds)
