"""gpt-oss adapters as LoRA GGUFs, decided on the tiny gpt-oss (tests/models.py).

The pinned llama.cpp's convert_lora_to_gguf.py cannot convert an adapter on the fused expert tensors
(`adapter.target_parameters: [mlp.experts.gate_up_proj, mlp.experts.down_proj]`, as seed 000 trains): PEFT saves
them as parameter adapters (`mlp.experts.base_layer.lora_A.weight`, rank x experts rows) that it cannot map to a
GGUF tensor ("Can not map tensor"). But llama.cpp applies a LoRA per expert (`build_lora_mm_id`), and PEFT's
parameter LoRA is one plain LoRA per expert: `gguf.convert_adapter` converts the rest with llama.cpp's converter and
writes the expert tensors itself (trainer/export/expert_lora.py, which states the layout). Decided by the adapter
gate: base GGUF + that LoRA GGUF in llama.cpp runs like HF base + PEFT adapter; the same file without its expert
tensors fails, so the gate sees them. An adapter on attention only passes too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.models import chat_rows, tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.integration]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def make_adapter(base: Path, out: Path, target_parameters: list[str] | None) -> Any:
    """A saved PEFT adapter with seeded non-zero weights on attention (and the experts when asked)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"],
                                                  target_parameters=target_parameters, init_lora_weights=False,
                                                  task_type="CAUSAL_LM"))
    peft_model.save_pretrained(out)
    return peft_model


def job(mode: str, **export: Any) -> dict[str, Any]:
    return {"name": "gpt-oss-adapters", "base_model": "openai/gpt-oss-20b", "data": {"train": "train.jsonl"},
            "adapter": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear",
                        "target_parameters": EXPERTS},
            "export": {"mode": mode, **export}}


def test_the_pinned_converter_alone_cannot_map_expert_adapters(tmp_path: Path) -> None:
    from trainer.export import gguf
    from trainer.export.errors import ExportError

    base = tiny_model("gpt_oss")
    make_adapter(base, tmp_path / "adapter", EXPERTS)
    with pytest.raises(ExportError) as failed:  # what convert_adapter works around (expert_lora.py)
        gguf._run_script("convert_lora_to_gguf.py", ["--base", str(base), "--outfile", str(tmp_path / "a.gguf"),
                                                      str(tmp_path / "adapter")], tmp_path / "adapter.log")
    assert "Can not map tensor" in str(failed.value) and "mlp.experts.base_layer" in str(failed.value)


def test_expert_adapter_converts_and_passes_the_gate(tmp_path: Path) -> None:
    from gguf import GGUFReader
    from transformers import AutoTokenizer

    from trainer.data.render import end_of_turn
    from trainer.export import adapter_verify, expert_lora, gguf
    from trainer.spec.io import spec_from_dict

    base = tiny_model("gpt_oss")
    tok = AutoTokenizer.from_pretrained(base)
    peft_model = make_adapter(base, tmp_path / "adapter", EXPERTS)
    convs = [r["messages"] for r in chat_rows(2, seed=4, arch="gpt_oss")]
    adapted, _ = adapter_verify.references(peft_model, tok, convs)
    f16 = gguf.convert(base, tmp_path / "base-f16.gguf", "f16", tmp_path / "convert.log").path
    lora = gguf.convert_adapter(tmp_path / "adapter", base, tmp_path / "adapter.gguf", tmp_path / "adapter.log").path
    names = {t.name: tuple(t.shape) for t in GGUFReader(str(lora)).tensors}  # ggml order: (in, r, E), (r, out, E)
    assert names["blk.1.ffn_gate_exps.weight.lora_a"] == (256, 8, 4)
    assert names["blk.1.ffn_up_exps.weight.lora_b"] == (8, 256, 4)
    assert names["blk.1.ffn_down_exps.weight.lora_b"] == (8, 256, 4)

    no_experts = tmp_path / "no-experts.gguf"  # the same file less its expert tensors
    expert_lora.split(tmp_path / "adapter", (tmp_path / "copy").mkdir() or tmp_path / "copy")
    for f in ("adapter_config.json", "README.md"):
        (tmp_path / "copy" / f).write_bytes((tmp_path / "adapter" / f).read_bytes())
    gguf._run_script("convert_lora_to_gguf.py", ["--base", str(base), "--outtype", "f16", "--outfile",
                                                  str(no_experts), str(tmp_path / "copy")], tmp_path / "no.log")
    eos = [tok.eos_token, end_of_turn(tok)]
    right = adapter_verify.verify_adapter(f16, lora, adapted, tok, eos)
    without = adapter_verify.verify_adapter(f16, no_experts, adapted, tok, eos)
    print(f"gpt-oss expert adapter: top-1 {right.top1:.4f} KL {right.kl:.6f}; "
          f"without its expert tensors: top-1 {without.top1:.4f} KL {without.kl:.6f}")
    assert right.passed, right.failures()
    assert "kl" in {c.name for c in without.failures()}, without.failures()
    for mode, extra in (("adapters", {}), ("both", {}), ("merged", {"adapter_gguf": True})):
        assert spec_from_dict(job(mode, **extra)).export.mode == mode


def test_attention_adapter_converts_and_passes_the_gate(tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from trainer.data.render import end_of_turn
    from trainer.export import adapter_verify, gguf

    base = tiny_model("gpt_oss")
    tok = AutoTokenizer.from_pretrained(base)
    peft_model = make_adapter(base, tmp_path / "adapter", None)
    convs = [r["messages"] for r in chat_rows(2, seed=4, arch="gpt_oss")]
    adapted, plain = adapter_verify.references(peft_model, tok, convs)
    f16 = gguf.convert(base, tmp_path / "base-f16.gguf", "f16", tmp_path / "convert.log").path
    lora = gguf.convert_adapter(tmp_path / "adapter", base, tmp_path / "adapter.gguf", tmp_path / "adapter.log").path
    eos = [tok.eos_token, end_of_turn(tok)]
    right = adapter_verify.verify_adapter(f16, lora, adapted, tok, eos)
    without = adapter_verify.verify_adapter(f16, None, adapted, tok, eos)
    print(f"gpt-oss attention adapter: top-1 {right.top1:.4f} KL {right.kl:.6f}; "
          f"without it: top-1 {without.top1:.4f} KL {without.kl:.6f}")
    assert right.passed, right.failures()
    assert {c.name for c in without.failures()} == {"top1", "kl"}, without.failures()
