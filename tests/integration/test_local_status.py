"""A local job followed from another terminal, as a user does: `launch submit --local --detach` of a tiny real training
job returns at once; `launch status NAME` shows, mid-run, the step, the total, tokens/s and the ETA the trainer
publishes (trainer/tracking/progress.py, through the runner's KUBETUNE_PROGRESS_FILE), with the same fields in
`-o json`; `launch logs NAME` shows rank 0's own log; `launch cancel NAME` stops it and the status says so.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from launcher.cli import main
from launcher.local_resume import resume_problems
from tests.models import tiny_model, write_chat_jsonl

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("helm_binary")]
STEPS = 400  # far more than the test waits for: it cancels the job once progress shows


def launch(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The real command in its own process (no KUBETUNE_DEBUG, no model hub, no cluster)."""
    env = {k: v for k, v in os.environ.items() if k != "KUBETUNE_DEBUG"} | {"HF_HUB_OFFLINE": "1",
                                                                          "KUBECONFIG": os.devnull + "-none"}
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=180)


def status_json(name: str) -> dict[str, Any]:
    """`launch status NAME --local -o json`, in this process (polled often, so the fast way)."""
    done = CliRunner().invoke(main, ["status", name, "--local", "-o", "json"])
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def mid_run(name: str, timeout: float = 600) -> dict[str, Any]:
    """The status once the trainer has published a step with its speed and ETA, before the last step."""
    deadline, found = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        found = status_json(name)
        p = (found.get("progress") or {}).get("training")
        if p and p["eta_seconds"] is not None and p["step"] < p["total_steps"]:
            return found
        assert found["status"] in ("queued", "running"), found
        time.sleep(0.3)
    raise AssertionError(f"no progress within {timeout}s: {found}")


def test_a_detached_local_run_shows_its_progress_logs_and_cancel(tmp_path: Path) -> None:
    write_chat_jsonl(tmp_path / "train.jsonl", 64, seed=3)
    spec = {
        "name": "followed",
        "base_model": str(tiny_model("llama")),
        "model": {"dtype": "float32"},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": "train.jsonl", "max_seq_len": 96},
        "training": {"max_steps": STEPS, "learning_rate": 1e-3, "per_device_batch_size": 2, "logging_steps": 1},
        "resources": {"gpu": "none"},
        "eval": {"num_samples": 0},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    started = time.monotonic()
    done = launch("submit", "--local", "--detach", "job.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - started < 60, "--detach waited for the job"
    name = re.search(r"job (followed-[a-z0-9]{5}): started in the background", done.stdout).group(1)  # type: ignore[union-attr]
    assert f"launch status {name}" in done.stdout and f"launch logs {name} -f" in done.stdout

    found = mid_run(name)
    p = found["progress"]["training"]
    assert found["status"] == "running" and found["training"] == "running" and found["pods"][0]["phase"] == "Running"
    assert p["total_steps"] == STEPS and 1 <= p["step"] < STEPS
    assert p["tokens_per_second"] > 0 and p["eta_seconds"] > 0 and p["trained_tokens"] > 0
    assert p["loss"] > 0 and p["phase"] == "training" and 0 < p["fraction"] < 1

    shown = launch("status", name)  # no --local: found by name; the table a person reads
    assert shown.returncode == 0, shown.stderr
    line = re.search(r"^training: +step (\d+)/(\d+) \(\d+%\)(.*)$", shown.stdout, re.M)
    assert line, shown.stdout
    assert int(line.group(2)) == STEPS and int(line.group(1)) >= p["step"]
    assert re.search(r"[\d.]+k? tokens/s", line.group(3)) and re.search(r"ETA \d+", line.group(3)), line.group(0)

    logs = launch("logs", name)
    assert logs.returncode == 0 and re.search(r"^\[train\] step \d+/400 ", logs.stdout, re.M), logs.stdout[-2000:]
    assert "[rank 0]" not in logs.stdout  # the pod's own lines, as `kubectl logs` shows them

    cancelled = launch("cancel", name)
    assert cancelled.returncode == 0 and f"cancelled local job {name}" in cancelled.stdout, cancelled.stderr
    after = json.loads(launch("status", name, "-o", "json").stdout)
    assert after["status"] == "cancelled" and after["local"]["exit_code"] == 130
    assert after["progress"]["training"]["step"] < STEPS  # where it stopped
    assert "outcome:    cancelled (exit 130)" in launch("status", name).stdout
    runner = (Path(after["local"]["folder"]) / "runner.log").read_text()
    assert f"job {name}: stopped by SIGTERM" in runner, runner[-3000:]
    # the trainer stopped at a step boundary with a checkpoint, as on a preemption: `--resume NAME` goes on from it
    assert after["pods"][0]["reason"] == "Error (exit 75)", after["pods"]
    assert resume_problems(name, str(tmp_path / "runs" / "followed")) == []
