"""Preemption and resume of a DPO job through `launch submit --local`, the local runner delivering the SIGTERM: the
resumed run ends with the same adapter weights, step count and trained tokens as a run never stopped, in the same
MLflow run (the Trainer's own data skip and RNG restore under TRL's DPOTrainer; the frozen reference adapter rebuilt
from the starting adapter). Dropout on the LoRA path is kept (`preference.dropout: adapter`), so RNG state matters.

2 ranks under ZeRO-3: the distributed sampler's position on each rank, DeepSpeed's sharded checkpoint, and the
reference adapter rebuilt on every rank before DeepSpeed loads the checkpoint into the module. (The Trainer's own
checkpoint without DeepSpeed is resumed by tests/e2e/test_resume.py and tests/integration/test_strategies.py.)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.e2e.test_resume import finished, preempted
from tests.integration.test_preference_train import preference_rows
from tests.models import tiny_model

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_a_preempted_dpo_run_resumes_to_the_same_weights_as_one_never_stopped(tmp_path: Path) -> None:
    steps = 8
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in preference_rows(24, 1)))
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "resume", "base_model": str(tiny_model("llama")), "model": {"dtype": "float32"},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.1},
        "data": {"train": "data/train.jsonl", "format": "preference", "max_seq_len": 64},
        "training": {"objective": "dpo", "max_steps": steps, "grad_accum": 2, "learning_rate": 2.0e-3,
                     "per_device_batch_size": 1, "logging_steps": 1, "strategy": "zero3"},
        "preference": {"dropout": "adapter"},
        "resources": {"gpu": "none", "nodes": 2}, "eval": {"num_samples": 0},
    }))
    stop_after = random.randint(2, steps - 3)
    full = finished(spec, ("--set", "output.uri=full"), tmp_path / "full")
    name, manifest = preempted(spec, stop_after, ("--set", "output.uri=cut"))
    stopped_at = manifest["entries"][-1]["step"]
    assert stop_after < stopped_at < steps, (stop_after, manifest["entries"])
    cut = finished(spec, ("--resume", name, "--set", "output.uri=cut"), tmp_path / "cut")

    why = f"SIGTERM after step {stop_after}, stopped at {stopped_at}"
    assert cut["steps"] == full["steps"] == steps, why
    assert cut["run_id"] == manifest["run_id"], why
    a = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), f"{key} differs ({why})"
    assert cut["tokens_trained"] == full["tokens_trained"] and cut["rows_trained"] == full["rows_trained"], why
