"""Importance matrices: computed from the merged HF model, named for llama.cpp's tensors, written in
llama.cpp's imatrix GGUF format, read back (ours and the legacy `.dat`), and actually used by the
pinned quantizer."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from tests.models import chat_rows, tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def rows_for(folder: Path, n: int = 3) -> list[list[int]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    return [tok(tok.apply_chat_template(r["messages"], tokenize=False), add_special_tokens=False).input_ids
            for r in chat_rows(n, seed=2, arch=folder.name.split("-")[0])]


def f16_of(folder: Path, tmp: Path) -> Path:
    from trainer.export import gguf

    return gguf.convert(folder, tmp / "m-f16.gguf", "f16", tmp / "convert.log").path


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "phi3"])
def test_every_linear_layer_maps_to_a_gguf_tensor(arch, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.export import imatrix

    folder = tiny_model(arch)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    rows = rows_for(folder)
    found, unmapped = imatrix.compute(model, rows, f16_of(folder, tmp_path), "test")
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert unmapped == [], unmapped
    assert len(found) == len(linear)
    head = "token_embd.weight" if model.config.tie_word_embeddings else "output.weight"
    assert head in found.sums  # a tied head multiplies by the token embeddings in llama.cpp
    _, _, tensors = imatrix.gguf_tensors(f16_of(folder, tmp_path))
    tokens = sum(len(r) for r in rows)
    for name in found.sums:
        assert name in tensors and found.sums[name].shape == (tensors[name],)
        assert found.counts[name] == tokens  # one row per token, summed over every conversation
        assert np.all(found.sums[name] >= 0) and np.isfinite(found.sums[name]).all()


def test_sums_are_the_squared_inputs_of_the_layer(tmp_path):
    """The statistic itself, against a hand computation on one layer's captured input."""
    import torch
    from transformers import AutoModelForCausalLM

    from trainer.export import imatrix

    folder = tiny_model("llama")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    rows = rows_for(folder, 2)
    seen = []
    layer = model.model.layers[1].mlp.down_proj
    handle = layer.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach().reshape(-1, args[0].shape[-1])))
    stats = imatrix.collect(model, rows)
    handle.remove()
    x = torch.cat(seen[-2:]).double()
    sums, count = stats["model.layers.1.mlp.down_proj"]
    assert count == x.shape[0]
    np.testing.assert_allclose(sums, (x * x).sum(0).numpy(), rtol=1e-6)


def test_written_file_reads_back_and_drives_the_quantizer(tmp_path):
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    from trainer.export import gguf, imatrix

    folder = tiny_model("llama")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    f16 = f16_of(folder, tmp_path)
    found, _ = imatrix.compute(model, rows_for(folder), f16, "unit test data")
    path = imatrix.write(found, tmp_path / "imatrix.gguf")

    reader = GGUFReader(str(path))  # llama.cpp's layout: <tensor>.in_sum2 (f32) and <tensor>.counts
    names = {t.name for t in reader.tensors}
    assert {"blk.0.attn_q.weight.in_sum2", "blk.0.attn_q.weight.counts"} <= names
    back = imatrix.read(path)
    assert back.datasets == ["unit test data"] and sorted(back.sums) == sorted(found.sums)
    for name in found.sums:
        np.testing.assert_allclose(back.values(name), found.values(name), rtol=1e-6)

    plain = gguf.quantize(f16, tmp_path / "plain.gguf", "q4_k_m").path
    weighted = gguf.quantize(f16, tmp_path / "weighted.gguf", "q4_k_m", imatrix=back).path
    again = gguf.quantize(f16, tmp_path / "again.gguf", "q4_k_m", imatrix=back).path
    assert weighted.read_bytes() == again.read_bytes()  # deterministic
    assert weighted.read_bytes() != plain.read_bytes()  # the weights reached the quantizer



def test_legacy_dat_and_wrong_files(tmp_path):
    from trainer.export import imatrix
    from trainer.export.errors import ExportError

    values = np.array([2.0, 4.0, 6.0], dtype="<f4")  # stored as (sum / count) * ncall
    name = b"blk.0.ffn_down.weight"
    blob = struct.pack("<i", 1) + struct.pack("<i", len(name)) + name + struct.pack("<ii", 2, 3) + values.tobytes()
    dat = tmp_path / "old.dat"
    dat.write_bytes(blob + struct.pack("<i", 2))
    legacy = imatrix.read(dat)
    np.testing.assert_allclose(legacy.values("blk.0.ffn_down.weight"), [1.0, 2.0, 3.0])

    with pytest.raises(ExportError, match="does not exist"):
        imatrix.read(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"\x05\x00\x00\x00abc")
    with pytest.raises(ExportError, match="neither an imatrix GGUF nor a legacy"):
        imatrix.read(junk)
    model_gguf = f16_of(tiny_model("llama"), tmp_path)
    with pytest.raises(ExportError, match="not an importance matrix"):
        imatrix.read(model_gguf)
