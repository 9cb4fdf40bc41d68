"""Read a `.gguf` file's header: its metadata and tensor shapes, without loading any weights.

The `gguf` package imports numpy, which the launcher must not; the header is simple enough to read
here. Layout (GGUF v2/v3, little-endian): magic `GGUF`, uint32 version, uint64 tensor count, uint64
metadata count, the metadata key/value pairs, then one (name, dims, type, offset) record per tensor.
`config_from_gguf` turns that into the `config.json` fields the plan reads, the way transformers'
GGUF loader maps them.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import IO, Any

from launcher.errors import UserError

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
# llama.cpp's architecture names -> transformers model types (the families the plan knows)
_MODEL_TYPES = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma",
                "gemma2": "gemma2", "gemma3": "gemma3_text", "phi3": "phi3", "gpt-oss": "gpt_oss"}


class _Reader:
    def __init__(self, f: IO[bytes], where: str):
        self.f, self.where = f, where

    def unpack(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        data = self.f.read(size)
        if len(data) != size:
            raise UserError(f"{self.where}: the GGUF header ends early (truncated or not a GGUF file)")
        return struct.unpack(fmt, data)[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        return self.f.read(n).decode("utf-8", errors="replace")

    def value(self, kind: int, keep: Callable[[], bool]) -> Any:
        if kind in _SCALARS:
            return self.unpack(_SCALARS[kind])
        if kind == _STRING:
            return self.string()
        if kind == _ARRAY:
            item, n = self.unpack("<I"), self.unpack("<Q")
            if keep():
                return [self.value(item, keep) for _ in range(n)]
            for _ in range(n):  # skipped (e.g. the token list): only its length is kept
                self.value(item, keep)
            return n
        raise UserError(f"{self.where}: unknown GGUF value type {kind} (a newer GGUF version?)")


def read_header(f: IO[bytes], where: str) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """(metadata, tensor shapes) of a GGUF stream. Long arrays become their length."""
    r = _Reader(f, where)
    if f.read(4) != b"GGUF":
        raise UserError(f"{where}: not a GGUF file (no GGUF magic at the start)")
    version = r.unpack("<I")
    if version not in (2, 3):
        raise UserError(f"{where}: GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = r.unpack("<Q"), r.unpack("<Q")
    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = r.string()
        kind = r.unpack("<I")
        metadata[key] = r.value(kind, keep=lambda key=key: not key.startswith("tokenizer."))
    shapes: dict[str, tuple[int, ...]] = {}
    for _ in range(n_tensors):
        name = r.string()
        dims = tuple(r.unpack("<Q") for _ in range(r.unpack("<I")))
        r.unpack("<I")  # ggml type
        r.unpack("<Q")  # offset
        shapes[name] = dims
    return metadata, shapes


def config_from_gguf(metadata: dict[str, Any], shapes: dict[str, tuple[int, ...]], where: str) -> dict[str, Any]:
    """The `config.json` fields of a GGUF model, as transformers derives them when it loads the file."""
    arch = metadata.get("general.architecture")
    if arch not in _MODEL_TYPES:
        raise UserError(
            f"{where}: GGUF architecture {arch!r} is not one `launch plan` knows; known: {', '.join(_MODEL_TYPES)}"
        )

    def key(name: str, default: Any = None) -> Any:
        value = metadata.get(f"{arch}.{name}", default)
        if value is None:
            raise UserError(f"{where}: GGUF metadata has no `{arch}.{name}`, which the plan needs")
        return value

    heads = int(key("attention.head_count"))
    hidden = int(key("embedding_length"))
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = metadata.get(f"{arch}.vocab_size") or (tokens if isinstance(tokens, int) else None)
    if vocab is None and "token_embd.weight" in shapes:
        vocab = shapes["token_embd.weight"][-1]
    ffn = key("feed_forward_length")
    config: dict[str, Any] = {
        "model_type": _MODEL_TYPES[arch],
        "hidden_size": hidden,
        "num_hidden_layers": int(key("block_count")),
        "intermediate_size": int(max(ffn) if isinstance(ffn, list) else ffn),
        "num_attention_heads": heads,
        "num_key_value_heads": int(key("attention.head_count_kv", heads)),
        "head_dim": int(key("attention.key_length", hidden // heads)),
        "vocab_size": int(key("vocab_size", vocab)),
        "tie_word_embeddings": "output.weight" not in shapes,
        "attention_bias": "blk.0.attn_q.bias" in shapes,
    }
    if f"{arch}.expert_count" in metadata:
        config["num_local_experts"] = int(key("expert_count"))
        config["num_experts_per_tok"] = int(key("expert_used_count"))
    if config["model_type"] == "gemma3_text":  # transformers' Gemma 3 pattern; llama.cpp stores the window only
        layers = config["num_hidden_layers"]
        config["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(layers)]
    return config
