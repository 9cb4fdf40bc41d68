"""`training.prefetch` through the real training loop (trainer/train/loop.py, tiny llama, dropout on):

- prefetch 2 trains the same adapter as prefetch 0 and reports the same data accounting (the rows trained, not the
  rows the worker made ahead);
- a run stopped by SIGTERM after a step with prefetch on, then resumed from its checkpoint, ends with the same
  adapter as the run never stopped: the checkpoint holds the position after the trained batches.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.models import tiny_model, write_chat_jsonl
from trainer.spec.io import load_spec
from trainer.train.loop import FineTune
from trainer.train.preemption import Signals

pytestmark = pytest.mark.slow
STEPS = 8


class StopAfter(Signals):
    """SIGTERM as seen by the trainer once step `step` has trained (None: never)."""

    def __init__(self, step: int | None):
        super().__init__()
        self.step = step
        self.job: FineTune | None = None

    @property  # type: ignore[override]
    def received(self) -> int | None:
        trainer = getattr(self.job, "trainer", None)
        if self.step is None or trainer is None:
            return None
        return signal.SIGTERM if trainer.state.global_step >= self.step else None

    @received.setter
    def received(self, value: int | None) -> None:
        pass


def write_spec(folder: Path) -> Path:
    write_chat_jsonl(folder / "train.jsonl", n=40, seed=5)
    spec = {
        "name": "prefetch",
        "base_model": str(tiny_model("llama")),
        "model": {"dtype": "float32"},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.1},
        "data": {"train": "train.jsonl", "max_seq_len": 96},
        "training": {"max_steps": STEPS, "learning_rate": 2.0e-3, "per_device_batch_size": 2, "grad_accum": 2,
                     "logging_steps": 1, "save_steps": 100},
        "resources": {"gpu": "none"},
        "eval": {"num_samples": 0},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run(spec_path: Path, out: str, prefetch: int, monkeypatch: pytest.MonkeyPatch, stop_after: int | None = None) -> Any:
    monkeypatch.setenv("KUBETUNE_JOB_NAME", f"prefetch-{out}")
    monkeypatch.setenv("KUBETUNE_WORK_DIR", str(spec_path.parent / "work" / out))
    spec = load_spec(spec_path, [f"training.prefetch={prefetch}", f"output.uri={out}"])
    signals = StopAfter(stop_after)
    job = FineTune(spec, spec_path.parent, signals)
    signals.job = job
    ok = False
    try:
        job.run()
        ok = True
    finally:
        job.cleanup(ok, None if ok else "failed")
    assert not [t for t in threading.enumerate() if t.name == "kubetune-prefetch"]
    return job


def adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter" / "adapter_model.safetensors")


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], why: str) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), f"{key} differs ({why})"


def test_prefetch_trains_the_same_and_resumes_exactly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec_path = write_spec(tmp_path)
    run(spec_path, "plain", 0, monkeypatch)
    run(spec_path, "ahead", 2, monkeypatch)
    assert_same(adapter(tmp_path / "plain"), adapter(tmp_path / "ahead"), "prefetch 2 vs 0")
    stats = [json.loads((tmp_path / o / "data_stats.json").read_text())["train"] for o in ("plain", "ahead")]
    assert stats[0] == stats[1] and stats[0]["packed_rows"] == STEPS * 2 * 2, stats

    stopped = run(spec_path, "cut", 2, monkeypatch, stop_after=3)
    assert stopped.preempted and stopped.stop.stopped_at == 3
    assert not (tmp_path / "cut" / "adapter").exists()
    resumed = run(spec_path, "cut", 2, monkeypatch)
    assert resumed.resume is not None and resumed.resume.step == 3
    assert_same(adapter(tmp_path / "plain"), adapter(tmp_path / "cut"), "stopped after step 3 and resumed")
    cut = json.loads((tmp_path / "cut" / "data_stats.json").read_text())["train"]
    assert cut["rows_used"] == stats[0]["rows_used"] and cut["packed_rows"] == stats[0]["packed_rows"], cut
