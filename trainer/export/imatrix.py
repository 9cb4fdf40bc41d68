"""Importance matrices for llama.cpp's quantizer, computed from the merged model on the job's data.

An importance matrix tells the quantizer which input columns of each weight matrix matter: for every
matrix multiplication with a weight tensor, the mean of the squared input activations per column.
The quantizer then spends its rounding error where activations are small. llama.cpp's own
`llama-imatrix` tool computes it by running a float GGUF over calibration text; we compute the same
statistic with the merged HF model (a forward pre-hook on every `nn.Linear`) over the training
conversations rendered with the training chat template, which is the text the adapter learned, and
map each HF module to its GGUF tensor with gguf-py's own name map (checked against the float GGUF's
tensor names and row sizes).

The result goes to `llama_model_quantize` through its `imatrix` parameter (a C array of
`{name, data, size}`), and is written as a llama.cpp imatrix GGUF (`<tensor>.in_sum2` and
`<tensor>.counts`, `general.type = imatrix`), which `llama-quantize --imatrix` reads too. A file made
by `llama-imatrix` (GGUF or the legacy `.dat`) can be given instead of computing one.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trainer.export.errors import ExportError

SUM2, COUNTS = ".in_sum2", ".counts"
TIED_OUTPUT = ("output.weight", "token_embd.weight")


@dataclass
class Imatrix:
    """Per GGUF weight tensor: the sum of squared input activations per column, and how many rows were summed."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunks: int = 0
    chunk_size: int = 0

    def values(self, name: str) -> np.ndarray:
        """What the quantizer weighs columns by: the mean squared activation (1 where nothing was seen)."""
        count = self.counts[name]
        if count <= 0:
            return np.ones_like(self.sums[name], dtype=np.float32)
        return (self.sums[name] / count).astype(np.float32)

    def __len__(self) -> int:
        return len(self.sums)


# -- computing ------------------------------------------------------------------------------------
def collect(model: Any, token_rows: list[list[int]]) -> dict[str, tuple[np.ndarray, int]]:
    """HF module name -> (sum of x^2 per input column, rows seen), over `token_rows` fed one at a time."""
    import torch

    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def pre(_module: Any, args: tuple[Any, ...]) -> None:
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sums[name] = sums[name] + (x * x).sum(0) if name in sums else (x * x).sum(0)
            counts[name] = counts.get(name, 0) + x.shape[0]

        return pre

    handles = [m.register_forward_pre_hook(hook(n)) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear)]
    model.eval()
    try:
        with torch.no_grad():
            for ids in token_rows:
                model(torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    return {n: (sums[n].numpy(), counts[n]) for n in sums}


def gguf_tensors(path: Path) -> tuple[str, int, dict[str, int]]:
    """(architecture, block count, tensor name -> row size ne[0]) of a GGUF file."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    field_ = reader.fields.get("general.architecture")
    if field_ is None:
        raise ExportError(f"{path} has no general.architecture: not a model GGUF")
    arch = bytes(field_.parts[field_.data[0]]).decode()
    blocks = reader.fields.get(f"{arch}.block_count")
    n_blocks = int(blocks.parts[blocks.data[0]][0]) if blocks is not None else 0
    return arch, n_blocks, {t.name: int(t.shape[0]) for t in reader.tensors}


def to_gguf_names(stats: dict[str, tuple[np.ndarray, int]], float_gguf: Path,
                  datasets: list[str], chunk_size: int) -> tuple[Imatrix, list[str]]:
    """Map HF module statistics onto the GGUF's tensor names; returns the imatrix and what did not map."""
    import gguf

    arch, n_blocks, tensors = gguf_tensors(float_gguf)
    by_name = {name: a for a, name in gguf.MODEL_ARCH_NAMES.items()}
    if arch not in by_name:
        raise ExportError(f"gguf-py does not know the architecture {arch!r} of {float_gguf.name}")
    names = gguf.get_tensor_name_map(by_name[arch], n_blocks)
    out = Imatrix(datasets=datasets, chunk_size=chunk_size)
    unmapped = []
    for module, (sums, count) in stats.items():
        target = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if target == TIED_OUTPUT[0] and target not in tensors:
            target = TIED_OUTPUT[1]  # a tied head: llama.cpp multiplies by the token embeddings
        if target is None or target not in tensors or tensors[target] != sums.shape[0]:
            unmapped.append(module)
            continue
        out.sums[target] = sums.astype(np.float32)
        out.counts[target] = count
    if chunk_size:
        out.chunks = max(out.counts.values(), default=0) // chunk_size
    return out, unmapped


def chunks(token_rows: list[list[int]], size: int) -> list[list[int]]:
    """The rows as one stream cut into `size`-token chunks, as `llama-imatrix` reads its text (fewer, fuller
    forward passes than one per conversation)."""
    stream = [t for row in token_rows for t in row]
    return [stream[i: i + size] for i in range(0, len(stream), size)]


def compute(model: Any, token_rows: list[list[int]], float_gguf: Path, dataset: str,
            chunk_size: int = 512) -> tuple[Imatrix, list[str]]:
    """The importance matrix of `model` on `token_rows`, named for `float_gguf`'s tensors."""
    stats = collect(model, chunks(token_rows, chunk_size))
    imatrix, unmapped = to_gguf_names(stats, float_gguf, [dataset], chunk_size)
    if not imatrix:
        raise ExportError(f"no linear layer of the merged model maps to a tensor of {float_gguf.name}: the "
                          "importance matrix would be empty (set export.imatrix: null)")
    return imatrix, unmapped


# -- files ----------------------------------------------------------------------------------------
def write(imatrix: Imatrix, path: Path) -> Path:
    """llama.cpp's imatrix GGUF: what `llama-imatrix` writes and `llama-quantize --imatrix` reads."""
    from gguf import GGUFWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = GGUFWriter(str(path), arch="imatrix")
    writer.add_type("imatrix")
    writer.add_array("imatrix.datasets", imatrix.datasets or ["unknown"])
    writer.add_uint32("imatrix.chunk_count", imatrix.chunks)
    writer.add_uint32("imatrix.chunk_size", imatrix.chunk_size)
    for name in sorted(imatrix.sums):
        writer.add_tensor(name + SUM2, imatrix.sums[name].reshape(1, -1).astype(np.float32))
        writer.add_tensor(name + COUNTS, np.array([[float(imatrix.counts[name])]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read(path: Path) -> Imatrix:
    """An imatrix file: the GGUF format (ours or `llama-imatrix`'s), or llama.cpp's legacy `.dat`."""
    if not path.is_file():
        raise ExportError(f"export.imatrix.file: {path} does not exist")
    with path.open("rb") as f:
        magic = f.read(4)
    return _read_gguf(path) if magic == b"GGUF" else _read_legacy(path)


def _read_gguf(path: Path) -> Imatrix:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    kind = reader.fields.get("general.type")
    if kind is None or bytes(kind.parts[kind.data[0]]).decode() != "imatrix":
        raise ExportError(f"export.imatrix.file: {path} is a GGUF but not an importance matrix (general.type is "
                          "not `imatrix`); make one with llama.cpp's llama-imatrix, or leave `file` unset")
    tensors = {t.name: np.asarray(t.data, dtype=np.float32) for t in reader.tensors}
    out = Imatrix()
    for name, data in tensors.items():
        if not name.endswith(SUM2):
            continue
        base = name[: -len(SUM2)]
        counts = tensors.get(base + COUNTS)
        if counts is None:
            raise ExportError(f"export.imatrix.file: {path} has {name} without {base + COUNTS}")
        if counts.size != 1:
            raise ExportError(f"export.imatrix.file: {base} has per-expert counts ({counts.size}); MoE importance "
                              "matrices are not supported by kubetune's exporter yet")
        out.sums[base] = data.reshape(-1)
        out.counts[base] = int(counts.reshape(-1)[0])
    datasets = reader.fields.get("imatrix.datasets")
    if datasets is not None:
        out.datasets = [bytes(datasets.parts[i]).decode() for i in datasets.data]
    return out


def _read_legacy(path: Path) -> Imatrix:
    """The `.dat` layout: n; per entry: name length, name, ncall, nval, nval floats of (sum/count)*ncall."""
    blob = path.read_bytes()
    out = Imatrix()
    try:
        (n,), pos = struct.unpack_from("<i", blob, 0), 4
        for _ in range(n):
            (length,) = struct.unpack_from("<i", blob, pos)
            name = blob[pos + 4: pos + 4 + length].decode()
            pos += 4 + length
            ncall, nval = struct.unpack_from("<ii", blob, pos)
            pos += 8
            values = np.frombuffer(blob, dtype="<f4", count=nval, offset=pos).copy()
            pos += 4 * nval
            out.sums[name], out.counts[name] = values, max(ncall, 1)  # values / ncall = the mean
    except (struct.error, ValueError, UnicodeDecodeError) as e:
        raise ExportError(f"export.imatrix.file: {path} is neither an imatrix GGUF nor a legacy .dat ({e})") from None
    return out


# -- the quantizer's parameter ----------------------------------------------------------------------
class CArray:
    """`llama_model_imatrix_data[]` for `llama_model_quantize_params.imatrix`, keeping its buffers alive."""

    def __init__(self, imatrix: Imatrix):
        import llama_cpp

        entry = llama_cpp.llama_model_imatrix_data
        self._names = [name.encode() for name in imatrix.sums]
        self._data = [np.ascontiguousarray(imatrix.values(name), dtype=np.float32) for name in imatrix.sums]
        self.array = (entry * (len(self._names) + 1))()
        for i, (name, data) in enumerate(zip(self._names, self._data, strict=True)):
            self.array[i].name = name
            self.array[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            self.array[i].size = data.size
        self.array[len(self._names)].name = None  # the terminator llama.cpp stops at

    def pointer(self) -> Any:
        import llama_cpp

        return ctypes.cast(self.array, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
