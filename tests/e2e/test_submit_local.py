"""The whole path once: `launch submit --local` of a 2-node spec on a tiny random Llama.

The launcher renders the real chart with real helm, runs both pods of the Indexed Job as local
processes with the rendered command line (accelerate launch, rank from JOB_COMPLETION_INDEX,
rank 0 reached through the headless Service's host name), the two ranks join one gloo group,
train, and rank 0 writes the adapter, the MLflow run and `_SUCCESS`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tests.e2e.submit import submit_local
from tests.models import tiny_model, write_chat_jsonl

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_two_nodes_train_one_adapter(tmp_path: Path) -> None:
    write_chat_jsonl(tmp_path / "data" / "train.jsonl", n=96, seed=1)
    write_chat_jsonl(tmp_path / "data" / "eval.jsonl", n=8, seed=2)
    spec = {
        "name": "e2e-two-nodes",
        "base_model": str(tiny_model("llama")),
        "model": {"dtype": "float32"},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"train": "data/train.jsonl", "eval": "data/eval.jsonl", "max_seq_len": 128},
        "training": {"max_steps": 24, "learning_rate": 3.0e-3, "per_device_batch_size": 2, "warmup_ratio": 0.0,
                     "lr_scheduler": "constant"},
        "resources": {"gpu": "none", "nodes": 2},
        "eval": {"num_samples": 1, "max_new_tokens": 8},
    }
    spec_path = tmp_path / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    done = submit_local(spec_path)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-6000:]

    # both pods ran, each as its own rank of one process group of two
    assert re.search(r"^\[rank 0\] ", done.stdout, re.M) and re.search(r"^\[rank 1\] ", done.stdout, re.M), log[-3000:]
    assert "world size 2" in done.stdout, log[-3000:]

    out = tmp_path / "runs" / "e2e-two-nodes"
    marker = json.loads((out / "_SUCCESS").read_text())
    assert marker["steps"] == 24
    assert (out / "adapter" / "adapter_config.json").exists()
    assert (out / "spec.yaml").exists() and (out / "data_stats.json").exists()

    # the launcher ends by saying where everything is
    assert f"adapter:    {out / 'adapter'}" in done.stdout
    assert f"MLflow run: {marker['run_id']}" in done.stdout

    # the loss falls, as recorded in the MLflow run (rank 0 only: one value per step)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=marker["tracking_uri"])
    history = client.get_metric_history(marker["run_id"], "loss")
    steps = [m.step for m in history]
    assert len(steps) == len(set(steps)), "metrics were logged by more than one rank"
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(losses) >= 10
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 1.0, f"loss did not fall by a nat: {losses}"  # from ~ln(vocab) on random weights
