"""The GGUF header reader: a file written here byte by byte, the quickstart's real GGUF, and broken files."""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import pytest

from launcher.errors import UserError
from launcher.plan import source
from launcher.plan.gguf import config_from_gguf, read_header
from tests.resources import gemma3_gguf


def s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, kind: int, value: Any) -> bytes:
    body = {4: lambda v: struct.pack("<I", v), 6: lambda v: struct.pack("<f", v), 8: s}[kind](value)
    return s(key) + struct.pack("<I", kind) + body


def tokens(n: int) -> bytes:
    return s("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, n) + b"".join(s(f"t{i}") for i in range(n))


def write_gguf(path: Path, arch: str = "llama", version: int = 3, output_head: bool = True) -> Path:
    """A GGUF with a llama-style header and tensor records (no tensor data: the reader never needs it)."""
    h, ffn, layers, vocab = 64, 128, 2, 50
    metadata = [
        kv("general.architecture", 8, arch), kv(f"{arch}.embedding_length", 4, h),
        kv(f"{arch}.feed_forward_length", 4, ffn), kv(f"{arch}.block_count", 4, layers),
        kv(f"{arch}.attention.head_count", 4, 4), kv(f"{arch}.attention.head_count_kv", 4, 2),
        kv(f"{arch}.rope.freq_base", 6, 10000.0), tokens(vocab),
    ]
    shapes = {"token_embd.weight": (h, vocab), "output_norm.weight": (h,)}
    if output_head:
        shapes["output.weight"] = (h, vocab)
    for i in range(layers):
        shapes |= {f"blk.{i}.attn_q.weight": (h, h), f"blk.{i}.attn_k.weight": (h, 32),
                   f"blk.{i}.attn_v.weight": (h, 32), f"blk.{i}.attn_output.weight": (h, h),
                   f"blk.{i}.ffn_gate.weight": (h, ffn), f"blk.{i}.ffn_up.weight": (h, ffn),
                   f"blk.{i}.ffn_down.weight": (ffn, h), f"blk.{i}.attn_norm.weight": (h,),
                   f"blk.{i}.ffn_norm.weight": (h,)}
    records = b"".join(s(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
                       + struct.pack("<IQ", 0, 0) for name, dims in shapes.items())
    head = b"GGUF" + struct.pack("<IQQ", version, len(shapes), len(metadata))
    path.write_bytes(head + b"".join(metadata) + records)
    return path


def test_a_written_gguf_reads_as_its_config(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "tiny.gguf")
    with path.open("rb") as f:
        metadata, shapes = read_header(f, str(path))
    assert metadata["tokenizer.ggml.tokens"] == 50  # long arrays are skipped, their length kept
    config = config_from_gguf(metadata, shapes, str(path))
    assert config == {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128,
                      "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 50,
                      "tie_word_embeddings": False, "attention_bias": False}
    arch = source.from_local(path, "base_model")
    assert arch.total_params == sum(math.prod(d) for d in shapes.values())
    tied = source.from_local(write_gguf(tmp_path / "tied.gguf", output_head=False), "base_model")
    assert tied.tie_word_embeddings and tied.total_params == arch.total_params - 64 * 50


def test_the_quickstart_gguf_counts_every_tensor() -> None:
    path = gemma3_gguf()
    with path.open("rb") as f:
        metadata, shapes = read_header(f, str(path))
    arch = source.from_local(path, "base_model")
    assert arch.model_type == "gemma3_text" and arch.tie_word_embeddings and arch.mask_kinds == 2
    assert arch.total_params == sum(math.prod(d) for d in shapes.values())


@pytest.mark.parametrize(("content", "message"), [
    (b"NOPE" + b"\0" * 20, "not a GGUF file"),
    (b"GGUF" + struct.pack("<I", 1) + b"\0" * 16, "GGUF version 1 is not supported"),
    (b"GGUF" + struct.pack("<IQQ", 3, 1, 5) + s("general.architecture"), "ends early"),
])
def test_broken_files_say_what_is_wrong(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(content)
    with pytest.raises(UserError) as e:
        source.from_local(path, "base_model")
    assert message in e.value.message and str(path) in e.value.message


def test_an_unknown_gguf_architecture_is_named(tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        source.from_local(write_gguf(tmp_path / "x.gguf", arch="rwkv6"), "base_model")
    assert "GGUF architecture 'rwkv6'" in e.value.message and "gemma3" in e.value.message
