"""The export job waits for its own training run's marker: `_SUCCESS` to go on, `_FAILED` to stop."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from trainer.export.errors import ExportError
from trainer.export.wait import wait_for_success


def write(folder: Path, name: str, **marker: str) -> None:
    (folder / name).write_text(json.dumps(marker))


def test_own_success_is_taken(tmp_path: Path) -> None:
    write(tmp_path, "_SUCCESS", job_name="tune-ab12c", run_id="r1")
    assert wait_for_success(str(tmp_path), 0, job="tune-ab12c")["run_id"] == "r1"


def test_an_earlier_submissions_markers_are_not_this_ones(tmp_path: Path) -> None:
    write(tmp_path, "_SUCCESS", job_name="tune-old11", run_id="old")
    write(tmp_path, "_FAILED", job_name="tune-old22", error="boom")
    with pytest.raises(ExportError, match="no .*_SUCCESS after 0.001 min"):
        wait_for_success(str(tmp_path), 0.001, poll_seconds=0.01, job="tune-ab12c")
    assert wait_for_success(str(tmp_path), 0)["run_id"] == "old"  # run by hand: any marker


def test_training_failure_stops_the_wait(tmp_path: Path) -> None:
    def fail_later() -> None:
        time.sleep(0.3)
        write(tmp_path, "_FAILED", job_name="tune-ab12c", error="DataError: 40% of rows are bad")

    threading.Thread(target=fail_later).start()
    started = time.monotonic()
    with pytest.raises(ExportError, match=r"training failed \(DataError: 40% of rows are bad\)"):
        wait_for_success(str(tmp_path), 1, poll_seconds=0.05, job="tune-ab12c")
    assert time.monotonic() - started < 30


def test_no_deadline_by_default_and_a_line_every_few_minutes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """export.wait_minutes 0 (the default): a training Job that queues for days is still exported."""
    from trainer.export import wait
    from trainer.spec.export import ExportSpec

    assert ExportSpec().wait_minutes == 0
    monkeypatch.setattr(wait, "WAIT_LOG_SECONDS", 0.1)

    def succeed_later() -> None:
        time.sleep(0.6)
        write(tmp_path, "_SUCCESS", job_name="tune-ab12c", run_id="r9")

    threading.Thread(target=succeed_later).start()
    assert wait_for_success(str(tmp_path), 0, poll_seconds=0.05, job="tune-ab12c")["run_id"] == "r9"
    said = capsys.readouterr()
    lines = [line for line in (said.out + said.err).splitlines() if "waiting for" in line]
    assert len(lines) >= 3 and "min so far" in lines[-1]
