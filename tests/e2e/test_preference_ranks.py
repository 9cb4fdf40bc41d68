"""DPO on 2 ranks under each strategy (`ddp`, `zero2`, `zero3`, `fsdp`), compared with one rank: 2 ranks x 1 pair per
micro-batch train on the same global batches as 1 rank x 2 pairs (the Trainer's sampler deals consecutive batches to
the ranks), and the gradient of DPO's per-pair mean is the mean of the ranks' means, so the adapters must agree. Every
strategy on Llama; gpt-oss with expert LoRA under `ddp` and Gemma 3 under `zero3` too.

The reference forward is the policy with its adapter switched to TRL's frozen copy: under `zero3` and `fsdp` a forward
through sharded weights and a sharded adapter. With `preference.precompute_reference` it is one pass before training
(under ZeRO, through TRL's DeepSpeed inference engine), whose values every rank must end up holding: TRL would have
rank 0 write them to a file the other ranks read, which the nodes of a cluster (or here, the processes' own temporary
folders) do not share (trainer/train/trl_adapter.py).

2 CPU pods over gloo, through `launch submit --local`; `fsdp`, which accelerate runs on GPUs only, as
tests/integration/test_strategies.py runs it (tests/fixtures/fsdp_on_cpu.py, the same trainer entry point).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests import strategy_contract
from tests.e2e.submit import submit_local
from tests.integration.test_preference_train import preference_rows
from tests.models import tiny_model
from trainer.model.arch import EXPERT_PARAMETERS

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
STEPS = 4
# (strategy, precompute_reference) on 2 ranks
RUNS = [("ddp", True), ("zero2", False), ("zero3", False), ("zero3", True), ("fsdp", False)]


def job(folder: Path, nodes: int, strategy: str, precompute: bool, arch: str = "llama") -> dict[str, Any]:
    folder.mkdir(parents=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in preference_rows(16, 2)))
    adapter: dict[str, Any] = {"r": 4, "alpha": 8, "dropout": 0.0}
    if arch == "gpt_oss":  # the MoE experts too, as seeds 000 and 001 train them
        adapter["target_parameters"] = list(EXPERT_PARAMETERS["gpt_oss"])
    return {
        "name": "ranks", "base_model": str(tiny_model(arch)), "model": {"dtype": "float32"},
        "adapter": adapter,  # Harmony's system message alone is 75 tokens
        "data": {"train": "train.jsonl", "format": "preference", "max_seq_len": 128 if arch == "gpt_oss" else 64},
        "training": {"objective": "dpo", "max_steps": STEPS, "learning_rate": 1.0e-2, "lr_scheduler": "constant",
                     "warmup_ratio": 0.0, "per_device_batch_size": 2 // nodes, "strategy": strategy},
        "preference": {"precompute_reference": precompute},
        "resources": {"gpu": "none", "nodes": nodes}, "eval": {"num_samples": 0}, "output": {"uri": str(folder / "out")},
    }


def train(folder: Path, nodes: int, strategy: str, precompute: bool = False, arch: str = "llama"
          ) -> dict[str, torch.Tensor]:
    raw = job(folder, nodes, strategy, precompute, arch)
    if strategy == "fsdp":  # refused on CPU by `launch` (accelerate would run it as DDP): the contract's launcher
        plan = strategy_contract.Plan(strategy="fsdp", model=Path(raw["base_model"]), workdir=folder, processes=nodes)
        code = strategy_contract.launch(plan, "ranks", folder / "log.txt", raw)
        log = (folder / "log.txt").read_text()
    else:
        (folder / "job.yaml").write_text(yaml.safe_dump(raw))
        done = submit_local(folder / "job.yaml")
        code, log = done.returncode, done.stdout + done.stderr
    assert code == 0, log[-6000:]
    assert ("reference log-probabilities of the 16 train rows precomputed" in log) == precompute, log[-3000:]
    marker = json.loads((folder / "out" / "_SUCCESS").read_text())
    assert marker["steps"] == STEPS and marker["rows_trained"] == STEPS * 2
    return load_file(folder / "out" / "adapter" / "adapter_model.safetensors")


def test_two_ranks_train_the_adapter_one_rank_trains(tmp_path: Path) -> None:
    one = train(tmp_path / "one", 1, "ddp")
    moved = max(float(w.abs().max()) for k, w in one.items() if "lora_B" in k)
    assert moved > 1e-2  # trained: B starts at zero
    for strategy, precompute in RUNS:
        two = train(tmp_path / f"{strategy}-{precompute}", 2, strategy, precompute)
        assert two.keys() == one.keys()
        # Adam turns the float rounding of another reduction order into differences of ~1e-5 where a gradient is
        # near zero; other rows, or a summed instead of averaged gradient, move weights by ~the learning rate (1e-2).
        for key in one:
            assert torch.allclose(two[key], one[key], rtol=0, atol=2e-4), (strategy, precompute, key)



def losses(folder: Path) -> list[float]:
    """The DPO loss the run logged at each step (its local MLflow store)."""
    from mlflow import MlflowClient

    marker = json.loads((folder / "out" / "_SUCCESS").read_text())
    history = MlflowClient(marker["tracking_uri"]).get_metric_history(marker["run_id"], "loss")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def relative_b_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """||B_a - B_b|| / ||B_a|| over every lora_B: all of B is training (it starts at zero)."""
    keys = [k for k in a if "lora_B" in k]
    return (sum(float((a[k] - b[k]).pow(2).sum()) for k in keys) / sum(float(a[k].pow(2).sum()) for k in keys)) ** 0.5


@pytest.mark.parametrize(("arch", "strategy"), [("gpt_oss", "ddp"), ("gemma3", "zero3")])
def test_two_ranks_train_what_one_rank_trains_on_other_families(arch: str, strategy: str, tmp_path: Path) -> None:
    """gpt-oss with LoRA on its fused experts under ddp (the seeds' setup: each rank routes its own pairs to its own
    experts, and the policy and TRL's `ref` copy both carry expert LoRA), and Gemma 3 under zero3 (tied, scaled
    embeddings and MQA, partitioned): 2 ranks train what 1 rank trains on the same global batches.

    The comparison is the loss at every step (1e-5 relative) and the whole of B (1e-2 relative), not each weight: on
    gpt-oss another batch shape rounds the router's logits otherwise, and Adam turns a gradient near zero into a step
    of about the learning rate either way (measured: losses equal to 2e-6, B 5e-4 apart, single weights 1e-2 apart).
    A rank that trained other rows than 1 rank does, or lost its gradient in the reduction, changes the loss of the
    steps after it."""
    one = train(tmp_path / "one", 1, "ddp", arch=arch)
    assert max(float(w.abs().max()) for k, w in one.items() if "lora_B" in k) > 1e-2
    if arch == "gpt_oss":
        assert any("experts" in k for k in one), sorted(one)[:4]
    two = train(tmp_path / "two", 2, strategy, arch=arch)
    assert two.keys() == one.keys()
    curve_one, curve_two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(curve_one) == len(curve_two) == STEPS and curve_one[-1] < curve_one[0]
    for step, (x, y) in enumerate(zip(curve_one, curve_two, strict=True), 1):
        assert abs(x - y) <= 1e-5 * abs(x), (arch, strategy, step, curve_one, curve_two)
    assert relative_b_difference(one, two) <= 1e-2, (arch, strategy, relative_b_difference(one, two))
