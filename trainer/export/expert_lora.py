"""gpt-oss expert adapters as LoRA GGUF tensors, which llama.cpp's convert_lora_to_gguf.py cannot map.

PEFT trains `adapter.target_parameters: [mlp.experts.gate_up_proj, mlp.experts.down_proj]` as parameter LoRAs
(peft's lora.ParamWrapper), one rank-r LoRA per expert, saved as one pair per parameter and layer:
`...layers.N.mlp.experts.[base_layer.]lora_A.weight` of shape (r*E, in), rows expert-major (expert e's A is rows
e*r .. e*r+r-1), and `lora_B.weight` of shape (out, r*E), columns rank-major (expert e's B is columns e, E+e, ...).
gpt-oss's experts are `x @ W[e]` (is_transposed), so expert e's weight delta is (alpha / r) * B_e @ A_e in
(out, in) terms: a plain LoRA per expert.

llama.cpp applies a LoRA to an expert tensor with `build_lora_mm_id`: `b[e] @ (a[e] @ x)` scaled by alpha / rank
(rank = b's first dimension), for `blk.N.ffn_{gate,up,down}_exps.weight.lora_{a,b}` with a (E, r, in) and b
(E, out, r) (numpy order; ggml's ne reversed). gpt-oss's GGUF splits gate_up_proj into gate (its even output
columns) and up (the odd ones): so each takes A as it is and B's even or odd rows. Which pair is gate_up and which
is down follows from the shapes (gate_up: in = hidden, out = 2 * intermediate; down: in = intermediate, out =
hidden), which never coincide. Proven by the adapter gate: tests/integration/test_adapter_gguf_gptoss.py.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from trainer.export.errors import ExportError

WEIGHTS = "adapter_model.safetensors"
KEY = re.compile(r"^(?:base_model\.model\.)?model\.layers\.(\d+)\.mlp\.experts\.((?:base_layer\.)*)lora_([AB])\.weight$")


def split(adapter_dir: Path, copy: Path) -> dict[str, Any]:
    """Write `adapter_dir`'s weights less the expert LoRAs to `copy` (for llama.cpp's converter); return those."""
    from safetensors.torch import load_file, save_file

    if not (adapter_dir / WEIGHTS).is_file():
        raise ExportError(f"{adapter_dir} has no {WEIGHTS}: an adapter with target_parameters needs it for a LoRA GGUF")
    tensors = load_file(adapter_dir / WEIGHTS)
    experts = {k: v for k, v in tensors.items() if KEY.match(k)}
    others = [k for k in tensors if ".experts." in k and k not in experts]
    if not experts or others:
        raise ExportError(f"{adapter_dir}: expert LoRA tensors not of PEFT's target_parameters form {KEY.pattern} "
                          f"({others[:3] or 'none found'}): export this adapter merged (`export.mode: merged`)")
    save_file({k: v.contiguous() for k, v in tensors.items() if k not in experts}, copy / WEIGHTS)
    return experts


def gguf_tensors(experts: dict[str, Any], base_dir: Path, outtype: str = "f16") -> dict[str, np.ndarray]:
    """PEFT's expert LoRAs (`split`) -> llama.cpp's `blk.N.ffn_*_exps.weight.lora_{a,b}` arrays (module docstring)."""
    config = json.loads((base_dir / "config.json").read_text())
    if config.get("model_type") != "gpt_oss":
        raise ExportError(f"LoRA GGUF tensors for target_parameters are written for gpt-oss only, not "
                          f"{config.get('model_type')}: export this adapter merged (`export.mode: merged`)")
    n, hidden, inter = config["num_local_experts"], config["hidden_size"], config["intermediate_size"]
    pairs: dict[tuple[int, str], dict[str, Any]] = defaultdict(dict)
    for key, t in experts.items():
        layer, depth, ab = KEY.match(key).groups()  # type: ignore[union-attr]  # split kept matching keys only
        pairs[(int(layer), depth)][ab] = t.float()
    dtype = np.float16 if outtype == "f16" else np.float32
    out: dict[str, np.ndarray] = {}
    for (layer, _), pair in sorted(pairs.items()):
        a_full, b_full = pair["A"], pair["B"]
        (rows, d_in), (d_out, cols) = a_full.shape, b_full.shape
        if rows != cols or rows % n:
            raise ExportError(f"layer {layer}: expert LoRA shapes {tuple(a_full.shape)} / {tuple(b_full.shape)} are "
                              f"not rank x {n} experts")
        a = a_full.reshape(n, rows // n, d_in)  # (E, r, in)
        b = b_full.reshape(d_out, rows // n, n).permute(2, 0, 1)  # (E, out, r)
        blk = f"blk.{layer}"
        if (d_in, d_out) == (hidden, 2 * inter):  # gate_up_proj: gate = even output columns, up = odd
            found = {f"{blk}.ffn_gate_exps.weight": (a, b[:, 0::2]), f"{blk}.ffn_up_exps.weight": (a, b[:, 1::2])}
        elif (d_in, d_out) == (inter, hidden):
            found = {f"{blk}.ffn_down_exps.weight": (a, b)}
        else:
            raise ExportError(f"layer {layer}: an expert LoRA of shape in {d_in} / out {d_out} is neither gate_up_proj "
                              f"({hidden} / {2 * inter}) nor down_proj ({inter} / {hidden})")
        for name, (la, lb) in found.items():
            if name + ".lora_a" in out:
                raise ExportError(f"two expert LoRAs on {name}")
            out[name + ".lora_a"] = la.contiguous().numpy().astype(dtype)
            out[name + ".lora_b"] = lb.contiguous().numpy().astype(dtype)
    return out


def append(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Rewrite the LoRA GGUF at `path` with `tensors` added (its metadata and tensors kept as they are)."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter, Keys

    reader = GGUFReader(str(path))
    arch = reader.fields[Keys.General.ARCHITECTURE].contents()
    tmp = path.with_name(path.name + ".part")
    writer = GGUFWriter(str(tmp), arch=arch)
    for field in reader.fields.values():
        if field.name == Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue
        sub = field.types[-1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub)
    for t in reader.tensors:
        writer.add_tensor_info(t.name, t.data.shape, t.data.dtype, t.data.nbytes, t.tensor_type)
    for name, arr in tensors.items():
        writer.add_tensor_info(name, arr.shape, arr.dtype, arr.nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in reader.tensors:
        writer.write_tensor_data(t.data, tensor_endianess=reader.endianess)
    for arr in tensors.values():
        writer.write_tensor_data(arr)
    writer.close()
    del reader
    os.replace(tmp, path)
