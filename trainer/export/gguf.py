"""GGUF files from the merged model, with the one pinned llama.cpp.

Conversion runs llama.cpp's own `convert_hf_to_gguf.py` (and `convert_lora_to_gguf.py` for the
adapter) as a subprocess of this Python, with that tree's `gguf-py` first on PYTHONPATH; the
quantizer is `llama_model_quantize` of the llama-cpp-python build of the same llama.cpp (checked:
both come from the same llama-cpp-python version). The tree is `$KUBETUNE_LLAMA_CPP_DIR`, else
`<repo>/.cache/llama.cpp`, as fetched by `scripts/fetch_llama_cpp.py`.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trainer.export import expert_lora
from trainer.export.errors import ExportError
from trainer.spec.quants import QUANTS

if TYPE_CHECKING:
    from trainer.export.imatrix import Imatrix

ENV = "KUBETUNE_LLAMA_CPP_DIR"
HINTS = {
    "BPE pre-tokenizer was not recognized": "llama.cpp does not know this tokenizer's pre-tokenizer; export the "
    "base model's original tokenizer files (tokenizer.json / tokenizer.model) with the adapter",
    "Missing": "the model folder lacks a tokenizer file llama.cpp needs (often a sentencepiece tokenizer.model)",
    "No module named 'sentencepiece'": "install sentencepiece (llama.cpp's converter imports it for every tokenizer)",
    "Model ": "llama.cpp does not support this architecture at the pinned version",
}


def llama_cpp_dir() -> Path:
    d = Path(os.environ.get(ENV) or Path(__file__).resolve().parents[2] / ".cache" / "llama.cpp")
    if not (d / "convert_hf_to_gguf.py").is_file():
        raise ExportError(f"llama.cpp's converter not found in {d}: set {ENV} or run `make setup` "
                          "(scripts/fetch_llama_cpp.py fetches the pinned tree)")
    return d


def llama_cpp_version() -> str:
    """The pinned llama-cpp-python version; the converter tree and the quantizer must both be it."""
    tree = (llama_cpp_dir() / "VERSION").read_text().strip() if (llama_cpp_dir() / "VERSION").is_file() else "unknown"
    try:
        import llama_cpp
    except ImportError:
        raise ExportError("llama-cpp-python is not installed: run `make setup` (scripts/build_llama_cpp.sh "
                          f"builds llama-cpp-python {tree})") from None
    if tree != llama_cpp.__version__:
        raise ExportError(f"the llama.cpp converter in {llama_cpp_dir()} is from llama-cpp-python {tree} but the "
                          f"installed quantizer is {llama_cpp.__version__}: run `make setup` so both are the pinned one")
    return tree


@dataclass(frozen=True)
class GgufFile:
    quant: str
    path: Path
    seconds: float

    @property
    def size(self) -> int:
        return self.path.stat().st_size


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def _run_script(script: str, args: list[str], log: Path) -> None:
    tree = llama_cpp_dir()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(tree / "gguf-py"), str(tree), *filter(None, [os.environ.get("PYTHONPATH")])]))
    env.pop("NO_LOCAL_GGUF", None)
    cmd = [sys.executable, str(tree / script), *args]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        rc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tree).returncode
    if rc != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-12:]
        hint = next((h for k, h in HINTS.items() if any(k in line for line in tail)), "see the log")
        raise ExportError(f"llama.cpp's {script} failed (exit {rc}): {hint}. Log {log}:\n  " + "\n  ".join(tail))


def convert(model_dir: Path, out: Path, outtype: str, log: Path) -> GgufFile:
    """HF folder -> float GGUF (`f32`, `f16` or `bf16`) with llama.cpp's converter."""
    if QUANTS[outtype].step != "convert":
        raise ValueError(f"{outtype} is made by the quantizer, not the converter")
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    _run_script("convert_hf_to_gguf.py", [str(model_dir), "--outtype", outtype, "--outfile", str(out)], log)
    return GgufFile(outtype, out, time.perf_counter() - started)


@contextlib.contextmanager
def native_output_to(log: Path) -> Iterator[None]:
    """llama.cpp's C++ code prints a line per tensor to fds 1 and 2: send them to `log` meanwhile."""
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with log.open("ab") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def quantize(src: Path, out: Path, quant: str, threads: int | None = None, imatrix: Imatrix | None = None,
             log: Path | None = None) -> GgufFile:
    """Float GGUF -> `quant` with llama.cpp's `llama_model_quantize` (weighted by `imatrix` when given).
    llama.cpp's own output goes to `log` (default: beside `out`)."""
    import llama_cpp

    started = time.perf_counter()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTS[quant].ftype)
    params.nthread = threads or max(1, os.cpu_count() or 1)
    if imatrix is not None:
        from trainer.export.imatrix import CArray

        entries = CArray(imatrix)  # kept alive until the call returns
        params.imatrix = entries.pointer()
    out.parent.mkdir(parents=True, exist_ok=True)
    log = log or out.with_suffix(".quantize.log")
    with native_output_to(log):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params))
    if rc != 0 or not out.is_file():
        tail = "\n  ".join(log.read_text(errors="replace").strip().splitlines()[-8:])
        raise ExportError(f"llama.cpp could not quantize {src.name} to {quant} (code {rc}); the tensors' row size "
                          f"must be a multiple of 256 for K-quants (use q8_0 / q4_0 for such models). Log {log}:\n  "
                          f"{tail}")
    return GgufFile(quant, out, time.perf_counter() - started)


def convert_adapter(adapter_dir: Path, base_dir: Path, out: Path, log: Path, outtype: str = "f16") -> GgufFile:
    """PEFT adapter -> LoRA GGUF (for runtimes that load adapters: llama.cpp `--lora`, Ollama ADAPTER).

    llama.cpp scales every LoRA tensor by the file's one `lora_alpha` over that tensor's rank, and the converter
    writes `lora_alpha` as the config states it: so the converter reads a copy of the adapter whose config says
    PEFT's scale in those terms (`lora_config`). Fused expert tensors (`target_parameters`, gpt-oss), which the
    converter cannot map, are taken out of that copy and written by trainer/export/expert_lora.py."""
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    with tempfile.TemporaryDirectory(prefix=".adapter-", dir=out.parent) as tmp:
        copy = Path(tmp)
        (copy / "adapter_config.json").write_text(json.dumps(lora_config(config), indent=2))
        experts = {}
        if config.get("target_parameters"):
            experts = expert_lora.split(adapter_dir, copy)
        for f in adapter_dir.iterdir():
            if not (copy / f.name).exists():
                (copy / f.name).symlink_to(f.resolve())
        _run_script("convert_lora_to_gguf.py",
                    ["--base", str(base_dir), "--outtype", outtype, "--outfile", str(out), str(copy)], log)
    if experts:
        expert_lora.append(out, expert_lora.gguf_tensors(experts, base_dir, outtype))
    return GgufFile("adapter", out, time.perf_counter() - started)


def lora_config(config: dict[str, Any]) -> dict[str, Any]:
    """`config` (a PEFT adapter_config.json) with the `lora_alpha` that makes llama.cpp's scale, alpha / r of each
    tensor, PEFT's: alpha / r as it is, rsLoRA's alpha / sqrt(r) as `alpha * sqrt(r)` with `use_rslora: false`.
    ExportError for a scale one alpha cannot express: per-module alphas, rsLoRA with per-module ranks, DoRA."""
    r, alpha = config["r"], config["lora_alpha"]
    alphas = {alpha, *(config.get("alpha_pattern") or {}).values()}
    ranks = {r, *(config.get("rank_pattern") or {}).values()}
    why = ("DoRA (use_dora): its magnitude vectors" if config.get("use_dora") else
           f"per-module alphas (alpha_pattern {config['alpha_pattern']})" if len(alphas) > 1 else
           f"rsLoRA with per-module ranks (rank_pattern {config['rank_pattern']})"
           if config.get("use_rslora") and len(ranks) > 1 else None)
    if why:
        raise ExportError(f"a LoRA GGUF carries one lora_alpha, which llama.cpp divides by each tensor's rank; it "
                          f"cannot express {why}. Export this adapter merged (`export.mode: merged` without "
                          "adapter_gguf)")
    if config.get("use_rslora"):
        alpha = alpha * math.sqrt(r)
    return config | {"lora_alpha": alpha, "use_rslora": False, "alpha_pattern": {}}
