"""MLflow goes away in the middle of `launch submit --local` and comes back: training goes on, the
metrics logged meanwhile arrive with their own steps and timestamps, every step exactly once. And
the tracker on its own: a run created late when MLflow was down at the start, a resumed job
reattached without logging a step twice, metrics never taken handed back to be written out."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from tests.integration.servers import mlflow_server
from tests.models import tiny_model, write_chat_jsonl

pytestmark = pytest.mark.integration
STEPS = 40


class Lines:
    """The launch process's output, read in a thread; `wait_for` blocks until a line contains a text."""

    def __init__(self, proc: subprocess.Popen[str]):
        self.lines: list[tuple[float, str]] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with self.cond:
                self.lines.append((time.time(), line))
                self.cond.notify_all()

    def wait_for(self, text: str, timeout: float = 300) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for at, line in self.lines:
                    if text in line:
                        return at
                if not self.thread.is_alive() or time.monotonic() > deadline:
                    raise AssertionError(f"no line with {text!r}; output:\n{self.text()[-4000:]}")
                self.cond.wait(timeout=1)

    def text(self) -> str:
        return "".join(line for _, line in self.lines)


@pytest.mark.slow
def test_training_outlives_an_mlflow_restart_and_logs_every_step_once(tmp_path: Path) -> None:
    write_chat_jsonl(tmp_path / "train.jsonl", 48, seed=4)
    root = tmp_path / "mlflow"
    first = mlflow_server(root, crash=True)  # gone at once: a graceful stop can outlast the whole training
    url = first.__enter__()
    try:
        spec = {
            "name": "outage",
            "base_model": str(tiny_model("llama")),
            "model": {"dtype": "float32"},
            "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
            "data": {"train": "train.jsonl", "max_seq_len": 96},
            "training": {"max_steps": STEPS, "learning_rate": 1e-3, "per_device_batch_size": 2, "logging_steps": 1},
            "resources": {"gpu": "none"},
            "tracking": {"mlflow_uri": url, "experiment": "outage", "flush_timeout": 240},
            "eval": {"num_samples": 0},
        }
        (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
        env = {k: v for k, v in os.environ.items() if k != "KUBETUNE_DEBUG"} | {"HF_HUB_OFFLINE": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "submit", "--local", "job.yaml"],
                                cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = Lines(proc)
        out.wait_for("[train] step 3/")
    finally:
        first.__exit__(None, None, None)
    down_at = time.time()
    out.wait_for("unreachable")  # the trainer noticed, and goes on
    out.wait_for("[train] step 12/")
    with mlflow_server(root, port=urlparse(url).port) as again:
        up_at = time.time()
        assert again == url
        assert proc.wait(timeout=600) == 0, out.text()[-5000:]
        out.wait_for("answers again")

        from mlflow import MlflowClient

        client = MlflowClient(url)
        (exp,) = [e for e in client.search_experiments() if e.name == "outage"]
        (run,) = client.search_runs([exp.experiment_id])  # one run: nothing was created twice
        assert run.info.status == "FINISHED" and run.data.params["training.max_steps"] == str(STEPS)
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted(m.step for m in history) == list(range(1, STEPS + 1)), "a step is missing or logged twice"
        during = [m for m in history if down_at * 1000 < m.timestamp < up_at * 1000]
        assert during, "no loss was logged while MLflow was down, or the buffered ones lost their timestamps"
        for key in ("learning_rate", "grad_norm", "tokens_per_second"):
            assert len({m.step for m in client.get_metric_history(run.info.run_id, key)}) == STEPS, key
        assert "adapter" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert not (tmp_path / "runs" / "outage" / "mlflow-unsent.jsonl").exists()


# -- the tracker on its own, against the real server --------------------------------------------
def tracking_spec(url: str) -> Any:
    from trainer.spec.io import spec_from_dict

    return spec_from_dict({"name": "tracked", "base_model": "org/model", "data": {"train": "t.jsonl"},
                           "tracking": {"mlflow_uri": url, "experiment": "tracked"}})


def test_a_job_started_while_mlflow_is_down_creates_its_run_when_it_answers(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from tests.integration.servers import free_port
    from trainer.tracking.tracker import Tracker

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tracker = Tracker(tracking_spec(url), tmp_path / "store", active=True)  # nothing answers: no error
    assert tracker.run_id is None
    for step in (1, 2, 3):
        tracker.log_metrics({"loss": 4.0 - step}, step=step)
    with mlflow_server(tmp_path / "mlflow", port=port):
        assert tracker.end("FINISHED", timeout=120) == []
        run = MlflowClient(url).get_run(tracker.run_id)
        assert run.info.status == "FINISHED" and run.data.params["name"] == "tracked"
        assert [(m.step, m.value) for m in MlflowClient(url).get_metric_history(run.info.run_id, "loss")] == [
            (1, 3.0), (2, 2.0), (3, 1.0)]


def test_a_resumed_job_reattaches_and_logs_each_step_once(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from trainer.tracking.tracker import Tracker

    with mlflow_server(tmp_path / "mlflow") as url:
        first = Tracker(tracking_spec(url), tmp_path / "store", active=True)
        first.log_metrics({"data/rows": 48}, step=0)
        for step in range(1, 7):  # crashed after step 6; its last checkpoint is step 4
            first.log_metrics({"loss": 10.0 - step}, step=step)
        assert first.end("KILLED", timeout=60) == []
        again = Tracker(tracking_spec(url), tmp_path / "store", active=True, run_id=first.run_id, resumed_step=4)
        again.log_metrics({"data/rows": 48}, step=0)
        for step in range(5, 9):  # steps 5 and 6 again, then new ones
            again.log_metrics({"loss": 10.0 - step}, step=step)
        assert again.end("FINISHED", timeout=60) == []
        client = MlflowClient(url)
        run = client.get_run(first.run_id)
        assert run.info.status == "FINISHED" and run.data.tags["kubetune.resumed_from_step"] == "4"
        assert sorted(m.step for m in client.get_metric_history(first.run_id, "loss")) == list(range(1, 9))
        assert [m.step for m in client.get_metric_history(first.run_id, "data/rows")] == [0]
        assert len(client.search_runs([run.info.experiment_id])) == 1


def test_artifacts_and_tags_logged_while_mlflow_is_down_reach_the_run_when_it_answers(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from tests.integration.servers import free_port
    from trainer.tracking.tracker import Tracker

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    tracker = Tracker(tracking_spec(url), tmp_path / "store", active=True)
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    tracker.log_metrics({"loss": 2.0}, step=1)
    tracker.set_tags({"kubetune.parent.resolved": "models:/base/1"})
    tracker.log_artifacts(tmp_path / "adapter", "adapter")
    tracker.log_metrics({"loss": 1.0}, step=2)
    with mlflow_server(tmp_path / "mlflow", port=port):
        assert tracker.end("FINISHED", timeout=120) == []
        client = MlflowClient(url)
        run = client.get_run(tracker.run_id)
        assert run.data.tags["kubetune.parent.resolved"] == "models:/base/1"
        assert [a.path for a in client.list_artifacts(tracker.run_id, "adapter")] == ["adapter/adapter_config.json"]
        assert [m.step for m in client.get_metric_history(tracker.run_id, "loss")] == [1, 2]


def test_metrics_mlflow_never_took_are_handed_back(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.integration.servers import free_port
    from trainer.tracking.tracker import Tracker

    tracker = Tracker(tracking_spec(f"http://127.0.0.1:{free_port()}"), tmp_path / "store", active=True)
    tracker.log_metrics({"loss": 1.5, "grad_norm": 0.5}, step=7, timestamp_ms=1_700_000_000_000)
    tracker.log_artifact(tmp_path / "data_stats.json")
    left = tracker.end("FINISHED", timeout=2)
    assert "could not log data_stats.json" in capsys.readouterr().out
    assert sorted(left, key=lambda m: m["key"]) == [
        {"key": "grad_norm", "value": 0.5, "timestamp": 1_700_000_000_000, "step": 7},
        {"key": "loss", "value": 1.5, "timestamp": 1_700_000_000_000, "step": 7},
    ]
