"""Preemption and resume through `launch submit --local`, the local runner delivering the SIGTERM.

- Exactness: a run stopped by SIGTERM at a random step and resumed (`--resume NAME`) ends with the
  same adapter weights and step count as a run never stopped, in the same MLflow run, each step
  logged once. Dropout is on, so the restored RNG states matter.
- Another world size (2 -> 1 and 1 -> 2 nodes): one epoch, stopped and resumed with
  `--set resources.nodes=M`; the total step count is what the rows left call for, and the rows
  and label tokens trained over both runs are exactly one pass's (plus, when the rows left do not
  fill the last global batch, the first rows of the next pass, as in any epoch-based run).
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.e2e.submit import submit_local
from tests.models import tiny_model, write_chat_jsonl
from trainer.train.preemption import EXIT_PREEMPTED

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
RESUME = re.compile(r"launch submit --local --resume (\S+) ")


def write_job(folder: Path, training: dict[str, Any], nodes: int = 1, packing: bool = True) -> Path:
    write_chat_jsonl(folder / "data" / "train.jsonl", n=48, seed=3)
    spec = {
        "name": "resume",
        "base_model": str(tiny_model("llama")),
        "model": {"dtype": "float32"},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.1},
        "data": {"train": "data/train.jsonl", "max_seq_len": 96, "packing": packing},
        "training": {"learning_rate": 2.0e-3, "per_device_batch_size": 2, "logging_steps": 1, **training},
        "resources": {"gpu": "none", "nodes": nodes},
        "eval": {"num_samples": 0},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def preempted(spec: Path, after_step: int, args: tuple[str, ...] = ()) -> tuple[str, dict[str, Any]]:
    """Run until the local runner sends SIGTERM to rank 0 after `after_step`; the job name and its manifest."""
    done = submit_local(spec, args=args, env={"KUBETUNE_LOCAL_SIGTERM": rf"0:\[train\] step {after_step}/"})
    log = done.stdout + done.stderr
    assert done.returncode == EXIT_PREEMPTED, log[-6000:]
    assert "SIGTERM to rank 0 (a simulated preemption)" in done.stdout, log[-3000:]
    (name,) = RESUME.findall(done.stderr)
    out = Path(yaml.safe_load(spec.read_text()).get("output", {}).get("uri") or spec.parent / "runs" / "resume")
    for arg in args:
        if arg.startswith("output.uri="):
            out = spec.parent / arg.removeprefix("output.uri=")
    manifest = json.loads((out / "checkpoints" / "latest.json").read_text())
    assert manifest["job_name"] == name and not (out / "_SUCCESS").exists() and not (out / "_FAILED").exists()
    return name, manifest


def finished(spec: Path, args: tuple[str, ...], out: Path) -> dict[str, Any]:
    done = submit_local(spec, args=args)
    assert done.returncode == 0, (done.stdout + done.stderr)[-6000:]
    return json.loads((out / "_SUCCESS").read_text())


def test_a_preempted_run_resumes_to_the_same_weights_as_one_never_stopped(tmp_path: Path) -> None:
    steps = 10
    spec = write_job(tmp_path, {"max_steps": steps, "grad_accum": 2})
    stop_after = random.randint(2, steps - 3)
    full = finished(spec, ("--set", "output.uri=full"), tmp_path / "full")

    name, manifest = preempted(spec, stop_after, ("--set", "output.uri=cut"))
    stopped_at = manifest["entries"][-1]["step"]
    assert stop_after < stopped_at < steps, (stop_after, manifest["entries"])
    cut = finished(spec, ("--resume", name, "--set", "output.uri=cut"), tmp_path / "cut")

    why = f"SIGTERM after step {stop_after}, stopped at {stopped_at}"
    assert cut["steps"] == full["steps"] == steps, why
    assert cut["run_id"] == manifest["run_id"] and cut["resumes"] == [
        {"step": stopped_at, "world_size_before": 1, "world_size": 1}], why
    a = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "cut" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key], b[key], rtol=0, atol=1e-6), f"{key} differs ({why})"
    assert cut["tokens_trained"] == full["tokens_trained"], why

    from mlflow import MlflowClient

    client = MlflowClient(cut["tracking_uri"])
    assert [r.info.run_id for r in client.search_runs([client.get_run(cut["run_id"]).info.experiment_id])
            if r.info.run_name == name] == [cut["run_id"]]
    losses = client.get_metric_history(cut["run_id"], "loss")
    assert sorted(m.step for m in losses) == list(range(1, steps + 1)), why


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)])
def test_resume_on_another_world_size_trains_each_row_once(tmp_path: Path, before: int, after: int) -> None:
    spec = write_job(tmp_path, {"epochs": 1}, nodes=before, packing=False)  # one row per sample: 48 rows
    out = tmp_path / "runs" / "resume"
    name, manifest = preempted(spec, 3)  # stops at step 4 unless the machine is very slow
    k, done = manifest["entries"][-1]["step"], manifest["entries"][-1]["rows_trained"]
    assert manifest["entries"][-1]["world_size"] == before and done == k * before * 2

    resumed = submit_local(spec, args=("--resume", name, "--set", f"resources.nodes={after}"))
    assert resumed.returncode == 0, (resumed.stdout + resumed.stderr)[-6000:]
    marker = json.loads((out / "_SUCCESS").read_text())
    per_step = after * 2
    steps_left = math.ceil((48 - done) / per_step)
    spill = steps_left * per_step - (48 - done)  # the last step's rows beyond the pass, from the next one (k odd)
    assert marker["steps"] == k + steps_left, (k, marker["steps"])
    assert marker["rows_trained"] == 48 + spill
    assert marker["resumes"] == [{"step": k, "world_size_before": before, "world_size": after}]
    stats = json.loads((out / "data_stats.json").read_text())["train"]
    assert stats["rows_used"] == stats["packed_rows"] == 48 + spill  # the stream's own count agrees
    assert marker["tokens_trained"] == stats["tokens_trained"]  # counted by the Trainer == by the stream
    if spill == 0:  # exactly one pass: its label tokens, as the resumed run's count of a whole pass says
        (pass_tokens,) = re.findall(r"tokens, (\d+) trained", resumed.stdout.split("counted one pass")[1])[:1]
        assert marker["tokens_trained"] == int(pass_tokens)
