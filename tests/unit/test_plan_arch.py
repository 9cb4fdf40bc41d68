"""The plan's architecture model against the real thing: transformers' modules and PEFT's adapters.

Parameter totals and LoRA / DoRA trainable counts of launcher/plan/arch.py must equal what a real
model built by transformers from the same config has, and what PEFT's `get_peft_model` adds to it.
Tiny configs of each family run on CPU; the seeds' real models are built on the `meta` device
(shapes only, no memory), so the catalogue's numbers are checked against transformers too.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from launcher.errors import UserError
from launcher.plan import catalog
from launcher.plan.arch import from_hf_config
from launcher.plan.memory import adapter_params
from launcher.plan.setup import Setup

TINY = {"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 300}
CONFIGS: dict[str, dict[str, Any]] = {
    "llama": {"model_type": "llama", **TINY, "tie_word_embeddings": False},
    "llama-biases": {"model_type": "llama", **TINY, "attention_bias": True, "mlp_bias": True},
    "mistral": {"model_type": "mistral", **TINY},
    "qwen2-tied": {"model_type": "qwen2", **TINY, "tie_word_embeddings": True},
    "qwen3": {"model_type": "qwen3", **TINY, "head_dim": 32},
    "gemma3-text": {"model_type": "gemma3_text", **TINY, "num_key_value_heads": 1, "head_dim": 32,
                    "layer_types": ["sliding_attention", "full_attention"]},
    "phi3": {"model_type": "phi3", **TINY, "pad_token_id": 0},
    "gpt-oss": {"model_type": "gpt_oss", **TINY, "head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 2,
                "layer_types": ["sliding_attention", "full_attention"]},
    "gemma3-multimodal": {"model_type": "gemma3", "text_config": {
        "model_type": "gemma3_text", **TINY, "num_key_value_heads": 1, "head_dim": 32,
        "layer_types": ["sliding_attention", "full_attention"]}, "vision_config": {
        "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 2,
        "patch_size": 14, "image_size": 56, "vision_use_head": False}, "mm_tokens_per_image": 4},
}


def build(config: dict[str, Any], device: str = "cpu") -> Any:
    """The model transformers' AutoModelForCausalLM builds from this config.json dict (what the trainer loads)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = copy.deepcopy(config)
    fields.pop("quantization_config", None)  # MXFP4 is the shipped storage; the plan models the trained model
    hf_config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(hf_config)


def peft_trainable(model: Any, **lora: Any) -> int:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(**lora))
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def total(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied head is one parameter, counted once


@pytest.mark.parametrize("name", CONFIGS)
def test_parameter_total_matches_transformers(name: str) -> None:
    config = CONFIGS[name]
    assert from_hf_config(config, name).total_params == total(build(config))


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize(("targets", "dora"), [("all-linear", False), ("all-linear", True), (("q_proj", "v_proj"), False)])
def test_lora_and_dora_counts_match_peft(name: str, targets: str | tuple[str, ...], dora: bool) -> None:
    config = CONFIGS[name]
    if name == "phi3" and targets != "all-linear":
        targets = ("qkv_proj",)  # Phi-3 fuses q, k and v
    arch = from_hf_config(config, name)
    ours = adapter_params(arch, Setup(r=8, target_modules=targets, method="dora" if dora else "lora"))
    real = peft_trainable(build(config), r=8, target_modules=list(targets) if isinstance(targets, tuple) else targets,
                          use_dora=dora)
    assert ours == real
    assert ours > 0


def test_all_linear_leaves_the_output_head_alone() -> None:
    arch = from_hf_config(CONFIGS["llama"], "llama")
    names = {lin.name for lin in arch.targets("all-linear")}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert arch.lm_head is not None and arch.lm_head.name == "lm_head"


def test_a_target_that_matches_nothing_is_named() -> None:
    arch = from_hf_config(CONFIGS["phi3"], "phi3")
    with pytest.raises(UserError) as e:
        arch.targets(["q_proj", "qkv_proj"])
    assert "adapter.target_modules: q_proj match no linear layer" in e.value.message
    assert "qkv_proj" in e.value.message and "gate_up_proj" in e.value.message


def test_an_unknown_family_says_which_are_known() -> None:
    with pytest.raises(UserError) as e:
        from_hf_config({"model_type": "mamba", "hidden_size": 8}, "some/config.json")
    assert "some/config.json: model_type 'mamba'" in e.value.message and "gpt_oss" in e.value.message


@pytest.mark.parametrize("model_id", ["openai/gpt-oss-20b", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
                                      "google/gemma-3-12b-it"])
def test_the_seeds_catalogue_entries_match_transformers(model_id: str) -> None:
    """Full-size models on the meta device: shapes only, built in seconds."""
    config = catalog.lookup(model_id)
    assert config is not None
    model = build(config, device="meta")
    arch = from_hf_config(config, model_id)
    assert arch.total_params == total(model)
    assert adapter_params(arch, Setup(r=16)) == peft_trainable(model, r=16, target_modules="all-linear")


def test_catalogue_lookup_ignores_case_and_knows_the_seeds_variants() -> None:
    assert catalog.lookup("OPENAI/GPT-OSS-20B") is catalog.lookup("unsloth/gpt-oss-20b")
    assert catalog.lookup("google/gemma-3-12b-pt") is catalog.lookup("google/gemma-3-12b-it")
    assert catalog.lookup("nobody/nothing") is None
    gpt_oss = from_hf_config(catalog.lookup("openai/gpt-oss-20b") or {}, "gpt-oss")
    assert (gpt_oss.num_experts, gpt_oss.experts_per_token, gpt_oss.num_layers) == (32, 4, 24)
    assert "MXFP4" in gpt_oss.shipped and gpt_oss.mask_kinds == 2 and not gpt_oss.sdpa
