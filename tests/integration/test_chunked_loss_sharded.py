"""`training.loss: chunked` under the sharded strategies trains what `full` trains.

1. As a pod runs it (tests/strategy_contract.py; CPU, 2 ranks over gloo): `zero3` and `fsdp`, each trained for 2
   steps with `chunked` and with `full` on the same model and rows, give the same loss at every step, the same eval
   loss and the same adapter (relative difference below 1e-5: the LoRA gradients of every step agree), with the
   chunked head in use (no fall-back) and, under ZeRO-3, the head's weight gathered from its shards for the loss.
2. FSDP2 leaving the head's weight sharded (its own group, resharded after forward; accelerate's does not, so the
   contract runs never unshard it themselves): 2 processes, `fully_shard` directly, the LoRA gradients of the chunked
   loss equal those of the full logits.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from tests import strategy_contract as contract

pytestmark = [pytest.mark.slow, pytest.mark.integration]

FALLBACK = "falls back to the full logits"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return contract.build_model(tmp_path_factory.mktemp("chunked") / "qwen2-tiny", "tiny", "float32")


def step_losses(log: str) -> list[str]:
    return re.findall(r"\[train\] step \d+/\d+ loss (\S+)", log)


@pytest.mark.parametrize("strategy", ["zero3", "fsdp"])
def test_chunked_trains_what_full_trains(strategy: str, model: Path, tmp_path: Path) -> None:
    results, logs = {}, {}
    for loss in ("chunked", "full"):
        plan = contract.Plan(strategy, model, tmp_path / loss, cpu=True, processes=2, steps=2, save_steps=None,
                             resume=False, timeout=600, loss=loss)
        results[loss] = contract.run(plan)
        assert results[loss].passed, contract.table([results[loss]])
        logs[loss] = Path(results[loss].log).read_text()
    chunked, full = results["chunked"], results["full"]
    assert FALLBACK not in logs["chunked"], logs["chunked"][-3000:]
    assert "training.loss: chunked: the LM head at the trained positions only" in logs["chunked"]
    assert "training.loss: chunked" not in logs["full"]
    if strategy == "zero3":  # the tiny head is partitioned (not a persistent parameter): the gather path ran
        assert "the LM head's weight is gathered from its ZeRO-3 shards" in logs["chunked"]
    assert step_losses(logs["chunked"]) == step_losses(logs["full"]) and len(step_losses(logs["full"])) == 2
    assert chunked.final_loss == pytest.approx(full.final_loss, rel=1e-6)
    assert chunked.trainer_eval == pytest.approx(full.trainer_eval, rel=1e-6)
    diff = contract.relative_difference(tmp_path / "full" / "out" / "adapter", tmp_path / "chunked" / "out" / "adapter")
    assert diff < 1e-5, diff


def _fsdp_worker(rank: int, port: int, out: str) -> None:
    """One rank: a tiny Llama with LoRA, each decoder layer and the (untied) head in an FSDP2 group of their own,
    resharded after forward, the rest with the root; the LoRA gradients of `full` then of `chunked`."""
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tests.integration.test_chunked_loss import SHAPE, batch, packed_items
    from trainer.train import head as head_mod
    from trainer.train.loss import TokenMeanLoss

    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(LlamaConfig(**SHAPE, num_key_value_heads=2, tie_word_embeddings=False))
    model = get_peft_model(base.float(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                                     lora_dropout=0.0, init_lora_weights=False))
    head = head_mod.choose("chunked", model, sharded="fsdp", say=print)
    assert head is not None
    head.rows = 7
    for layer in base.model.layers:
        fully_shard(layer, reshard_after_forward=True)
    fully_shard(base.lm_head, reshard_after_forward=True)
    fully_shard(model)
    b = batch(packed_items(seed=4 + rank))  # each rank its own rows
    inputs = {k: v for k, v in b.items() if k != "labels"}
    grads = []
    for h in (None, head):
        model.zero_grad()
        fn = TokenMeanLoss(h)
        if h is None:
            loss = fn(model(**inputs), b["labels"])
        else:
            with h.capture():
                loss = fn(model(**inputs, logits_to_keep=1), b["labels"])
        loss.backward()
        grads.append({k: p.grad.full_tensor() for k, p in model.named_parameters() if p.grad is not None})
        grads[-1]["loss"] = loss.detach()
    if rank == 0:
        torch.save({"full": grads[0], "chunked": grads[1], "gathers": head.gathers}, out)
    dist.destroy_process_group()


def test_fsdp2_head_sharded_outside_its_forward_is_unsharded_for_the_loss(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.multiprocessing as mp

    out = tmp_path / "grads.pt"
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.syspath_prepend(str(contract.ROOT))  # the spawned ranks import this module
    mp.spawn(_fsdp_worker, args=(contract.free_port(), str(out)), nprocs=2, join=True)
    got: dict[str, Any] = torch.load(out)
    assert got["gathers"] == 1  # the head's weight was a sharded DTensor at the loss, and unsharded for it
    want, have = got["full"], got["chunked"]
    assert len(want) > 1 and set(have) == set(want)
    assert any("lora_" in k for k in want)
    for k in want:
        torch.testing.assert_close(have[k], want[k], rtol=1e-5, atol=1e-7, msg=k)
