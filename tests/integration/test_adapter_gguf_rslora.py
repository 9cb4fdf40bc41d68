"""An rsLoRA adapter (scale alpha / sqrt(r)) as a LoRA GGUF, proven by the adapter gate on a tiny Llama.

llama.cpp's convert_lora_to_gguf.py writes the config's lora_alpha, and llama.cpp scales by lora_alpha / r: handed
the adapter as PEFT saved it, the file applies the adapter at sqrt(r) times too small a scale, and the gate fails
it. `gguf.convert_adapter` hands the converter lora_alpha = alpha * sqrt(r) (`gguf.lora_config`): it passes.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.models import chat_rows, tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.integration]
MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]


def test_rslora_adapter_passes_the_gate_only_with_its_scale(tmp_path: Path) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.data.render import end_of_turn
    from trainer.export import adapter_verify, gguf

    base = tiny_model("llama")
    tok = AutoTokenizer.from_pretrained(base)
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, use_rslora=True, target_modules=MODULES,
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    with torch.no_grad():  # peaked distributions, as the gate test makes them (test_adapter_gate.py)
        peft_model.base_model.model.lm_head.lora_B["default"].weight.mul_(16)
    peft_model.save_pretrained(tmp_path / "adapter")
    adapted, _ = adapter_verify.references(peft_model, tok, [r["messages"] for r in chat_rows(3, seed=4)])
    f16 = gguf.convert(base, tmp_path / "base-f16.gguf", "f16", tmp_path / "convert.log").path
    eos = [tok.eos_token, end_of_turn(tok)]

    lora = gguf.convert_adapter(tmp_path / "adapter", base, tmp_path / "rslora.gguf", tmp_path / "rslora.log").path
    right = adapter_verify.verify_adapter(f16, lora, adapted, tok, eos)
    gguf._run_script("convert_lora_to_gguf.py", ["--base", str(base), "--outtype", "f16", "--outfile",
                                                  str(tmp_path / "as-saved.gguf"), str(tmp_path / "adapter")],
                     tmp_path / "as-saved.log")  # the converter on the adapter as PEFT saved it
    as_saved = adapter_verify.verify_adapter(f16, tmp_path / "as-saved.gguf", adapted, tok, eos)
    print(f"rsLoRA r=16 alpha=16: converted by convert_adapter: top-1 {right.top1:.4f} KL {right.kl:.6f}; "
          f"as saved (alpha / r): top-1 {as_saved.top1:.4f} KL {as_saved.kl:.6f}")
    assert right.passed, right.failures()
    assert "kl" in {c.name for c in as_saved.failures()}, as_saved.failures()
