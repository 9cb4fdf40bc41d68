"""The adapter gate (trainer/export/adapter_verify.py) on a tiny Llama: a PEFT adapter with seeded, non-zero LoRA
weights (its lm_head part scaled up, so the adapted next-token distributions are peaked like a trained model's and
far from the base's), the base converted to f16 and quantized to q8_0 with the pinned llama.cpp, the adapter
converted with `convert_adapter`. llama.cpp applies the LoRA GGUF at load; the reference is HF base + PEFT adapter.

The right pairing passes (the q8_0 base judged against its own floor); the same adapter over a different base
(another tiny Llama, same shapes, so llama.cpp loads it without complaint) fails; the base GGUF without the adapter
fails against HF base + adapter: the gate sees the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.models import chat_rows, tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.integration]
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


@dataclass
class Setup:
    tok: Any
    eos: list[str]
    adapted: Any  # Golden: HF base + adapter
    base: Any  # Golden: HF base alone
    f16: Path
    q8: Path
    other_f16: Path
    other_q8: Path
    adapter: Path


def make_adapter(base: Path, out: Path) -> Any:
    """A saved PEFT adapter that changes the logits a lot; returns the PeftModel."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=MODULES,
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    with torch.no_grad():  # a random base's distributions are flat: a strong head adapter peaks them
        peft_model.base_model.model.lm_head.lora_B["default"].weight.mul_(16)
    peft_model.save_pretrained(out)
    return peft_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    from transformers import AutoTokenizer

    from trainer.data.render import end_of_turn
    from trainer.export import adapter_verify, gguf

    tmp = tmp_path_factory.mktemp("adapter-gate")
    base, other = tiny_model("llama"), tiny_model("llama", seed=1)
    tok = AutoTokenizer.from_pretrained(base)
    peft_model = make_adapter(base, tmp / "adapter")
    adapted, plain = adapter_verify.references(peft_model, tok, [r["messages"] for r in chat_rows(3, seed=4)])
    f16 = gguf.convert(base, tmp / "base-f16.gguf", "f16", tmp / "convert.log").path
    other_f16 = gguf.convert(other, tmp / "other-f16.gguf", "f16", tmp / "convert-other.log").path
    return Setup(tok, [tok.eos_token, end_of_turn(tok)], adapted, plain, f16,
                 gguf.quantize(f16, tmp / "base-q8_0.gguf", "q8_0").path, other_f16,
                 gguf.quantize(other_f16, tmp / "other-q8_0.gguf", "q8_0").path,
                 gguf.convert_adapter(tmp / "adapter", base, tmp / "adapter.gguf", tmp / "adapter.log").path)


def q8_gate() -> Any:
    """q8_0's gate for a random tiny base: its flat distributions put many near-ties into top-1, so the floor's top-1
    is held to 90% (a real model's default: 95%); KL stays q8_0's default."""
    from trainer.spec.export import GateSpec

    return GateSpec(min_top1=0.90, max_kl=0.02)


def floor(s: Setup, base_gguf: Path) -> Any:
    from trainer.export.adapter_verify import verify_adapter

    return verify_adapter(base_gguf, None, s.base, s.tok, s.eos, q8_gate())


def test_right_pairing_passes(setup: Setup) -> None:
    from trainer.export.adapter_verify import verify_adapter

    s = setup
    f16 = verify_adapter(s.f16, s.adapter, s.adapted, s.tok, s.eos)
    print(f"right f16: top-1 {f16.top1:.4f} KL {f16.kl:.6f}")
    assert f16.passed, f16.failures()
    assert f16.quant == "f16" and (f16.min_top1, f16.max_kl) == (0.98, 0.005)  # read from the file, default gate
    assert {c.name for c in f16.checks} == {"tokenization", "top1", "kl", "chat_template", "stopping"}

    base_q8 = floor(s, s.q8)
    q8 = verify_adapter(s.q8, s.adapter, s.adapted, s.tok, s.eos, q8_gate(), floor=base_q8)
    print(f"floor q8_0: top-1 {base_q8.top1:.4f} KL {base_q8.kl:.6f}; right q8_0: top-1 {q8.top1:.4f} KL {q8.kl:.6f}")
    assert base_q8.passed and q8.passed, (base_q8.failures(), q8.failures())
    assert q8.quant == "q8_0" and "floor" in {c.name for c in q8.checks}
    assert q8.max_kl == pytest.approx(base_q8.kl + 0.02)  # judged relative to the floor


def test_adapter_over_a_different_base_fails(setup: Setup) -> None:
    from trainer.export.adapter_verify import verify_adapter

    s = setup
    f16 = verify_adapter(s.other_f16, s.adapter, s.adapted, s.tok, s.eos)
    print(f"wrong base f16: top-1 {f16.top1:.4f} KL {f16.kl:.6f}")
    assert {c.name for c in f16.failures()} == {"top1", "kl"}, f16.failures()
    assert f16.kl > 1.0

    wrong_floor = floor(s, s.other_q8)  # the wrong base against the HF base: as wrong as the adapter run
    q8 = verify_adapter(s.other_q8, s.adapter, s.adapted, s.tok, s.eos, q8_gate(), floor=wrong_floor)
    print(f"wrong base q8_0: floor top-1 {wrong_floor.top1:.4f} KL {wrong_floor.kl:.6f}; "
          f"adapter top-1 {q8.top1:.4f} KL {q8.kl:.6f}")
    assert "floor" in {c.name for c in q8.failures()}, q8.failures()
    assert "not a faithful quantization" in next(c.detail for c in q8.failures() if c.name == "floor")


def test_base_without_the_adapter_fails(setup: Setup) -> None:
    from trainer.export.adapter_verify import verify_adapter

    s = setup
    f16 = verify_adapter(s.f16, None, s.adapted, s.tok, s.eos)
    q8 = verify_adapter(s.q8, None, s.adapted, s.tok, s.eos, q8_gate(), floor=floor(s, s.q8))
    print(f"no adapter: f16 top-1 {f16.top1:.4f} KL {f16.kl:.6f}; q8_0 top-1 {q8.top1:.4f} KL {q8.kl:.6f}")
    for report in (f16, q8):
        assert {c.name for c in report.failures()} == {"top1", "kl"}, report.failures()
        assert report.kl > 1.0
