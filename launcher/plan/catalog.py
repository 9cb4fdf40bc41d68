"""Known hub models: their real `config.json` numbers, so `launch plan` needs no download.

Each entry holds the fields of the model's published `config.json` that the plan reads, and cites
it. Ids match case-insensitively; instruct/base twins with the same shapes share one entry.
"""

from __future__ import annotations

from typing import Any

_SIGLIP = {  # the vision tower of the multimodal Gemma 3 checkpoints (4B, 12B, 27B)
    "model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
    "num_attention_heads": 16, "patch_size": 14, "image_size": 896, "num_channels": 3, "vision_use_head": False,
}


def _gemma3_layers(n: int) -> list[str]:
    """Gemma 3's attention pattern: five sliding-window layers, then one full-attention layer."""
    return ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(n)]


CATALOG: dict[tuple[str, ...], dict[str, Any]] = {
    # https://huggingface.co/openai/gpt-oss-20b/blob/main/config.json (checked against a verbatim copy of it in
    # the public GitHub code index; `model.safetensors.index.json` there: total_size 13,761,264,768 bytes)
    ("openai/gpt-oss-20b", "unsloth/gpt-oss-20b"): {
        "model_type": "gpt_oss", "hidden_size": 2880, "intermediate_size": 2880, "num_hidden_layers": 24,
        "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 201088,
        "num_local_experts": 32, "num_experts_per_tok": 4, "attention_bias": True, "tie_word_embeddings": False,
        "sliding_window": 128, "layer_types": ["sliding_attention", "full_attention"] * 12,
        "quantization_config": {"quant_method": "mxfp4"},
    },
    # https://huggingface.co/deepseek-ai/DeepSeek-R1-Distill-Qwen-7B/blob/main/config.json (Qwen2ForCausalLM,
    # the Qwen2.5-Math-7B shapes; checked against copies of it in the GitHub code index)
    ("deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "unsloth/DeepSeek-R1-Distill-Qwen-7B"): {
        "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
    },
    # https://huggingface.co/google/gemma-3-12b-it/blob/main/config.json (Gemma3ForConditionalGeneration; the same
    # numbers in AI-Hypercomputer/maxtext src/MaxText/utils/ckpt_conversion/utils/hf_model_configs.py, whose text
    # vocab is the tokenizer's 262144; the hub config's text_config has 262208)
    ("google/gemma-3-12b-it", "google/gemma-3-12b-pt", "unsloth/gemma-3-12b-it"): {
        "model_type": "gemma3", "vision_config": _SIGLIP, "text_config": {
            "model_type": "gemma3_text", "hidden_size": 3840, "intermediate_size": 15360, "num_hidden_layers": 48,
            "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "vocab_size": 262208,
            "sliding_window": 1024, "layer_types": _gemma3_layers(48)}},
    # https://huggingface.co/google/gemma-3-4b-it/blob/main/config.json (maxtext hf_model_configs.py as above)
    ("google/gemma-3-4b-it", "google/gemma-3-4b-pt", "unsloth/gemma-3-4b-it"): {
        "model_type": "gemma3", "vision_config": _SIGLIP, "text_config": {
            "model_type": "gemma3_text", "hidden_size": 2560, "intermediate_size": 10240, "num_hidden_layers": 34,
            "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 262208,
            "sliding_window": 1024, "layer_types": _gemma3_layers(34)}},
    # https://huggingface.co/google/gemma-3-27b-it/blob/main/config.json (maxtext hf_model_configs.py as above)
    ("google/gemma-3-27b-it", "google/gemma-3-27b-pt", "unsloth/gemma-3-27b-it"): {
        "model_type": "gemma3", "vision_config": _SIGLIP, "text_config": {
            "model_type": "gemma3_text", "hidden_size": 5376, "intermediate_size": 21504, "num_hidden_layers": 62,
            "num_attention_heads": 32, "num_key_value_heads": 16, "head_dim": 128, "vocab_size": 262208,
            "sliding_window": 1024, "layer_types": _gemma3_layers(62)}},
    # https://huggingface.co/google/gemma-3-1b-it/blob/main/config.json (Gemma3ForCausalLM, text only)
    ("google/gemma-3-1b-it", "google/gemma-3-1b-pt", "unsloth/gemma-3-1b-it"): {
        "model_type": "gemma3_text", "hidden_size": 1152, "intermediate_size": 6912, "num_hidden_layers": 26,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144,
        "sliding_window": 512, "layer_types": _gemma3_layers(26)},
    # https://huggingface.co/google/gemma-3-270m/blob/main/config.json (Gemma3ForCausalLM, text only; the
    # quickstart's model)
    ("google/gemma-3-270m", "google/gemma-3-270m-it", "unsloth/gemma-3-270m-it"): {
        "model_type": "gemma3_text", "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144,
        "sliding_window": 512, "layer_types": _gemma3_layers(18)},
    # https://huggingface.co/Qwen/Qwen2.5-0.5B-Instruct/blob/main/config.json (tied embeddings)
    ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-0.5B-Instruct"): {
        "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
    },
    # https://huggingface.co/Qwen/Qwen2.5-7B-Instruct/blob/main/config.json
    ("Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-7B-Instruct"): {
        "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
        "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064, "tie_word_embeddings": False,
    },
    # https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct/blob/main/config.json (maxtext hf_model_configs.py
    # llama31_8b_config)
    ("meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct", "meta-llama/Meta-Llama-3.1-8B-Instruct",
     "meta-llama/Meta-Llama-3-8B-Instruct", "unsloth/llama-3-8b-Instruct"): {
        "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
        "tie_word_embeddings": False,
    },
    # https://huggingface.co/meta-llama/Llama-3.1-70B-Instruct/blob/main/config.json (maxtext llama31_70b_config)
    ("meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.1-70B-Instruct", "meta-llama/Meta-Llama-3.1-70B-Instruct"): {
        "model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
        "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256,
        "tie_word_embeddings": False,
    },
    # https://huggingface.co/mistralai/Mistral-7B-Instruct-v0.3/blob/main/config.json (v0.3: 32768-token vocabulary)
    ("mistralai/Mistral-7B-v0.3", "mistralai/Mistral-7B-Instruct-v0.3"): {
        "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 32768,
        "tie_word_embeddings": False,
    },
    # https://huggingface.co/microsoft/Phi-3-mini-4k-instruct/blob/main/config.json (fused qkv_proj, gate_up_proj)
    ("microsoft/Phi-3-mini-4k-instruct", "unsloth/Phi-3-mini-4k-instruct"): {
        "model_type": "phi3", "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32064, "tie_word_embeddings": False,
    },
    # https://huggingface.co/Qwen/Qwen2-1.5B-Instruct/blob/main/config.json (tied embeddings)
    ("Qwen/Qwen2-1.5B", "Qwen/Qwen2-1.5B-Instruct", "unsloth/Qwen2-1.5B-Instruct"): {
        "model_type": "qwen2", "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
        "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True,
    },
}

# Unsloth's pre-quantized uploads: the same shapes, the weights stored as bitsandbytes NF4.
_BNB_4BIT = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
for _id, _of in (("unsloth/gpt-oss-20b-unsloth-bnb-4bit", "openai/gpt-oss-20b"),
                 ("unsloth/DeepSeek-R1-Distill-Qwen-7B-unsloth-bnb-4bit", "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B"),
                 ("unsloth/llama-3-8b-Instruct-bnb-4bit", "meta-llama/Meta-Llama-3-8B-Instruct"),
                 ("unsloth/Phi-3-mini-4k-instruct-bnb-4bit", "microsoft/Phi-3-mini-4k-instruct"),
                 ("unsloth/gemma-3-12b-it-unsloth-bnb-4bit", "google/gemma-3-12b-it")):
    _base = next(config for ids, config in CATALOG.items() if _of in ids)
    CATALOG[(_id,)] = {**_base, "quantization_config": _BNB_4BIT}

_BY_ID = {model_id.lower(): config for ids, config in CATALOG.items() for model_id in ids}


def lookup(model_id: str) -> dict[str, Any] | None:
    """The catalogued `config.json` fields of a hub id, or None."""
    return _BY_ID.get(model_id.lower())


def known_ids() -> list[str]:
    return [ids[0] for ids in CATALOG]
