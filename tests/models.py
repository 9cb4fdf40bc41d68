"""Tiny randomly initialised models of the real architectures, with real tokenizers.

`tiny_model("llama")` builds (once per test session) a 2-layer model of that architecture,
hidden size 256 (a multiple of 256, as GGUF K-quants need), with the family's real vocabulary
and chat template from `tests.resources`, saves it with its tokenizer into a folder and returns
the folder: a local `base_model` for a spec. Like the families' real HF folders, the SPM ones
(Phi-3, Gemma 3) also hold a sentencepiece `tokenizer.model`, which llama.cpp's converter reads:
every tiny model converts to GGUF. `write_chat_jsonl` writes a small `messages` dataset that a
LoRA visibly learns within a few dozen steps.
"""

from __future__ import annotations

import atexit
import functools
import json
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

from tests.resources import FAMILIES, tokenizer_for, vocab_path

Arch = Literal["llama", "qwen2", "qwen3", "qwen3_moe", "gemma3", "phi3", "gpt_oss", "deepseek_r1_qwen"]
TOKENIZER = {"llama": "llama3", "qwen2": "qwen2", "qwen3": "qwen2", "qwen3_moe": "qwen2", "gemma3": "gemma3",
             "phi3": "phi3", "gpt_oss": "harmony", "deepseek_r1_qwen": "deepseek_r1_qwen"}
SHAPE = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4}

_SESSION = Path(tempfile.mkdtemp(prefix="kubetune-tiny-models-"))
atexit.register(shutil.rmtree, _SESSION, ignore_errors=True)


def _config(arch: Arch, tok: Any) -> Any:
    from transformers import (
        Gemma3TextConfig,
        GptOssConfig,
        LlamaConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3Config,
        Qwen3MoeConfig,
    )

    ids = {"vocab_size": len(tok), "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
           "pad_token_id": tok.pad_token_id, "max_position_embeddings": 2048}
    if arch == "llama":  # Llama 3 8B: GQA, untied output head (so `all-linear` has an lm_head to leave alone)
        return LlamaConfig(**SHAPE, **ids, num_key_value_heads=2, tie_word_embeddings=False)
    if arch == "qwen2":  # Qwen2.5 small: GQA, q/k/v biases, tied embeddings
        return Qwen2Config(**SHAPE, **ids, num_key_value_heads=2, tie_word_embeddings=True)
    if arch == "qwen3":  # Qwen3 dense: q/k RMS norms, head_dim apart from hidden size, no q/k/v biases
        return Qwen3Config(**SHAPE, **ids, num_key_value_heads=2, head_dim=64, tie_word_embeddings=True)
    if arch == "qwen3_moe":  # Qwen3-30B-A3B in small: a top-k router over per-expert MLPs in every layer
        return Qwen3MoeConfig(**SHAPE, **ids, num_key_value_heads=2, head_dim=64, num_experts=4,
                              num_experts_per_tok=2, moe_intermediate_size=128, decoder_sparse_step=1)
    if arch == "deepseek_r1_qwen":  # DeepSeek-R1-Distill-Qwen-7B: Qwen2 with an untied head, DeepSeek's tokenizer
        return Qwen2Config(**SHAPE, **ids, num_key_value_heads=2, tie_word_embeddings=False)
    if arch == "gemma3":  # Gemma 3 270M: MQA, head_dim independent of hidden size, sliding + full layers
        return Gemma3TextConfig(**SHAPE, **ids, num_key_value_heads=1, head_dim=64, query_pre_attn_scalar=64,
                                sliding_window=64, layer_types=["sliding_attention", "full_attention"])
    if arch == "phi3":  # Phi-3 mini: fused qkv_proj and gate_up_proj
        return Phi3Config(**SHAPE, **ids, num_key_value_heads=4, tie_word_embeddings=False)
    if arch == "gpt_oss":  # gpt-oss 20b in small: GQA with attention sinks, sliding + full layers, a top-k router over
        # fused experts (3-D gate_up_proj / down_proj, which llama.cpp splits into 256-wide K-quantizable rows),
        # yarn rope as the real config has it. The harmony stand-in tokenizer (tests/resources.py).
        return GptOssConfig(**(SHAPE | {"intermediate_size": 256}), **(ids | {"max_position_embeddings": 131072}),
                            num_key_value_heads=2, head_dim=64, num_local_experts=4, num_experts_per_tok=2,
                            sliding_window=64, layer_types=["sliding_attention", "full_attention"])
    raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(TOKENIZER)}")


@functools.cache
def tiny_model(arch: Arch = "llama", seed: int = 0) -> Path:
    """Folder with a saved tiny `arch` model (float32) and its tokenizer; built once per session."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.export.vocab import write_sentencepiece_model

    tok = tokenizer_for(TOKENIZER[arch])
    config = _config(arch, tok)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = _SESSION / f"{arch}-{seed}"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    write_sentencepiece_model(vocab_path(TOKENIZER[arch]), out / "tokenizer.model")  # SPM vocabularies only
    return out


def copy_model(arch: Arch, dest: Path) -> Path:
    """A private copy of the session's tiny model (for tests that change or upload it)."""
    shutil.copytree(tiny_model(arch), dest)
    return dest


COUNTRIES = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
             ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Chile", "Santiago")]


def chat_rows(n: int, seed: int = 0, arch: Arch | None = None) -> list[dict[str, Any]]:
    """`n` short `messages` rows with a fixed answer pattern (easy to learn, easy to check); each
    starts with a system message unless `arch`'s chat template refuses one (Gemma 3)."""
    rng = random.Random(seed)
    system = arch is None or FAMILIES[TOKENIZER[arch]].system_role
    rows = []
    for _ in range(n):
        country, capital = rng.choice(COUNTRIES)
        rows.append({"messages": [
            *([{"role": "system", "content": "Answer in one sentence."}] if system else []),
            {"role": "user", "content": f"What is the capital of {country}?"},
            {"role": "assistant", "content": f"The capital of {country} is {capital}."},
        ]})
    return rows


def write_chat_jsonl(path: Path, n: int = 64, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(n, seed)), encoding="utf-8")
    return path
