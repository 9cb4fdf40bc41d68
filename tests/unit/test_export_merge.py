"""Merging: the merged model computes what base + adapter computed, in the spec's dtype; QLoRA
merges onto the de-quantized 4-bit base; tokenizer, template and stop tokens travel along."""

from __future__ import annotations

import json

import pytest
import torch

from tests.models import copy_model
from trainer.data import template_date
from trainer.spec.io import spec_from_dict

pytestmark = pytest.mark.slow


def make_adapter(base, out, quantization="none"):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from trainer.export.merge import load_dense_base
    from trainer.model.load import resolve_base_model

    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                  init_lora_weights=False, task_type="CAUSAL_LM"))
    peft_model.save_pretrained(out)
    spec = spec_from_dict({"name": "m", "base_model": str(base), "data": {"train": "x.jsonl"},
                           "model": {"dtype": "float32", "quantization": quantization}})
    # what training computed: the adapter on the base as training loaded it
    from peft import PeftModel

    trained = PeftModel.from_pretrained(load_dense_base(spec, resolve_base_model(str(base)), True), str(out))
    return spec, trained


def logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_merged_model_computes_what_base_plus_adapter_computed(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from trainer.export.merge import merge

    base = copy_model("qwen2", tmp_path / "base")
    spec, trained = make_adapter(base, tmp_path / "adapter")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "tokenizer")
    merged = merge(spec, tmp_path / "adapter", tmp_path / "tokenizer", tmp_path / "merged")
    ids = merged.tokenizer("The capital of Peru is Lima.").input_ids
    reloaded = AutoModelForCausalLM.from_pretrained(merged.path, dtype=torch.float32)
    assert torch.allclose(logits(reloaded, ids), logits(trained, ids), atol=1e-4)
    assert next(reloaded.parameters()).dtype == torch.float32
    assert merged.eos == ["<|endoftext|>", "<|im_end|>"]
    assert template_date.pinned(merged.tokenizer) == template_date.DEFAULT  # the spec has no data.template_date
    gen = GenerationConfig.from_pretrained(merged.path)
    assert set(merged.tokenizer.convert_tokens_to_ids(merged.eos)) <= set(gen.eos_token_id)
    assert "<|im_start|>" in (merged.path / "chat_template.jinja").read_text()
    assert json.loads((merged.path / "export_info.json").read_text())["qlora_weight_delta"] is None


def test_qwen3_moe_merges_its_fused_experts_and_router(tmp_path):
    """`all-linear` on Qwen3-MoE adapts the fused 3-D expert tensors and the router as PEFT parameter adapters: the
    merge must fold every one of them in, or routing and experts would differ from what training computed."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.export.merge import merge

    base = copy_model("qwen3_moe", tmp_path / "base")
    spec, trained = make_adapter(base, tmp_path / "adapter")
    wrapped = {getattr(m, "parameter_name", None) for _, m in trained.named_modules()}
    assert {"gate_up_proj", "down_proj", "weight"} <= wrapped  # the experts' tensors and the router's weight
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "tokenizer")
    merged = merge(spec, tmp_path / "adapter", tmp_path / "tokenizer", tmp_path / "merged")
    ids = merged.tokenizer("The capital of Peru is Lima.").input_ids
    reloaded = AutoModelForCausalLM.from_pretrained(merged.path, dtype=torch.float32)
    assert torch.allclose(logits(reloaded, ids), logits(trained, ids), atol=1e-4)
    original = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    assert not torch.allclose(logits(original, ids), logits(trained, ids), atol=1e-3)  # the adapter changed it


def test_qlora_merges_onto_the_dequantized_base(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.export.merge import merge

    base = copy_model("llama", tmp_path / "base")
    spec, trained = make_adapter(base, tmp_path / "adapter", quantization="4bit")
    AutoTokenizer.from_pretrained(base).save_pretrained(tmp_path / "tokenizer")
    merged = merge(spec, tmp_path / "adapter", tmp_path / "tokenizer", tmp_path / "merged")
    assert merged.qlora_weight_delta is not None and merged.qlora_weight_delta > 1e-3
    ids = merged.tokenizer("What is the capital of Japan?").input_ids
    reloaded = AutoModelForCausalLM.from_pretrained(merged.path, dtype=torch.float32)
    assert not hasattr(reloaded.config, "quantization_config")
    # the merge reproduces what the adapter computed on the 4-bit base it was trained against
    assert torch.allclose(logits(reloaded, ids), logits(trained, ids), atol=1e-3)
    # ... which a merge onto the original full-precision weights does not
    naive_spec = spec.model_copy(update={"model": spec.model.model_copy(update={"quantization": "none"})})
    naive = merge(naive_spec, tmp_path / "adapter", tmp_path / "tokenizer", tmp_path / "naive")
    naive_model = AutoModelForCausalLM.from_pretrained(naive.path, dtype=torch.float32)
    assert not torch.allclose(logits(naive_model, ids), logits(trained, ids), atol=1e-3)
