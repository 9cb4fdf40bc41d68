"""The start-up packing check (trainer/model/isolation.py) on a tiny model of every architecture the tests build.

Each model runs the check as a training job does: rows built by the training collator, one packing two
samples, one a third sample plus padding, against each sample alone; samples longer than the sliding
window where the model has one (Gemma 3, gpt-oss). gpt-oss is the trap: transformers 5.23 builds its
masks without the position ids, so its packed samples see each other until kubetune builds the masks.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.models import tiny_model
from trainer.data.collator import Collator
from trainer.model import isolation
from trainer.model.errors import ModelError

ARCHS = ["llama", "qwen2", "qwen3", "qwen3_moe", "gemma3", "phi3", "gpt_oss"]


def load(arch: str, attn: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tiny_model(arch)  # type: ignore[arg-type]
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attn)
    return model, AutoTokenizer.from_pretrained(path)


def attns(arch: str) -> list[str]:
    return ["eager"] if arch == "gpt_oss" else ["sdpa", "eager"]  # gpt-oss trains with eager attention


@pytest.mark.parametrize(("arch", "attn"), [(a, m) for a in ARCHS for m in attns(a)])
def test_packing_check_passes_on_every_architecture(arch: str, attn: str) -> None:
    model, tok = load(arch, attn)
    model.train()  # as a training job has it: the check turns dropout off and restores the mode
    lines: list[str] = []
    result = isolation.ensure_isolated(model, Collator(tok, packing=True), vocab=len(tok), say=lines.append)
    assert result.ok and result.max_diff < 1e-5, result
    window = getattr(model.config, "sliding_window", None)
    if window:  # the windowed layers are exercised: every sample is longer than the window
        assert min(result.tokens) > window
    assert len(lines) == 1 and "packing check" in lines[0]
    assert model.training


def test_gpt_oss_packed_samples_see_each_other_without_our_masks() -> None:
    """The trap, measured: when this fails, transformers builds gpt-oss's packed masks itself."""
    model, tok = load("gpt_oss", "eager")
    before = isolation.check(model, Collator(tok, packing=True), vocab=len(tok))
    assert not before.ok and before.max_diff > 0.1, before
    isolation.install_packed_masks(model)
    after = isolation.check(model, Collator(tok, packing=True), vocab=len(tok))
    assert after.max_diff < 1e-5, after


def test_gpt_oss_masks_hold_in_training_mode_with_gradients() -> None:
    """The masks built by the hook are the ones training uses: a packed training forward equals per-sample ones."""
    model, tok = load("gpt_oss", "eager")
    isolation.ensure_isolated(model, Collator(tok, packing=True), vocab=len(tok), say=lambda _: None)
    a, b = isolation._samples(model, len(tok), seed=3)[:2]
    item = {"input_ids": a + b, "labels": a + b, "position_ids": list(range(len(a))) + list(range(len(b)))}
    batch = Collator(tok, packing=True)([item])
    model.eval()  # dropout off; gradients still flow
    packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
    alone = model(input_ids=torch.tensor([b]), use_cache=False).logits
    assert packed.requires_grad
    torch.testing.assert_close(packed[0, len(a):], alone[0], atol=1e-5, rtol=1e-5)


def test_padding_free_layout_is_checked_too() -> None:
    model, tok = load("llama", "sdpa")
    result = isolation.check(model, Collator(tok, packing=True, padding_free=True), vocab=len(tok))
    assert result.ok, result


def test_a_model_that_mixes_packed_samples_stops_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """No way to build the masks: the job stops before step 1, naming the architecture and `data.packing: false`."""
    model, tok = load("gpt_oss", "eager")
    monkeypatch.setattr(isolation, "can_build_masks", lambda m: False)
    with pytest.raises(ModelError) as e:
        isolation.ensure_isolated(model, Collator(tok, packing=True), vocab=len(tok), say=lambda _: None)
    assert "GptOssForCausalLM" in str(e.value) and "data.packing: false" in str(e.value)


def test_a_collator_that_lets_samples_mix_fails_the_check() -> None:
    """The check is not blind: a KV cache (use_cache=True) is what makes transformers skip packed masks."""
    model, tok = load("llama", "sdpa")
    collator = Collator(tok, packing=True)

    def leaky(items: list[dict[str, list[int]]]) -> dict[str, Any]:
        return collator(items) | {"use_cache": True}

    result = isolation.check(model, leaky, vocab=len(tok))
    assert not result.ok and result.relative > 1e-2, result
