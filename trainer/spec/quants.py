"""The GGUF types kubetune exports: one table, read by the spec (validation, default gate
thresholds) and by the converter and quantizer. Standard library only: the launcher imports it.

`convert` types are written directly by llama.cpp's `convert_hf_to_gguf.py`; `quantize` types
by llama.cpp's quantizer from the float GGUF. The gate thresholds are what a healthy export of a
real model reaches on its own held-out prompts: top-1 agreement with the merged HF model (at
least) and mean KL(HF || GGUF) over next-token distributions (at most).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class QuantType:
    name: str
    step: Literal["convert", "quantize"]
    ftype: str  # llama.cpp's LLAMA_FTYPE_* name; the GGUF's general.file_type
    bits: float  # approximate bits per weight, for size estimates
    min_top1: float  # default gate: top-1 agreement with the merged model, at least
    max_kl: float  # default gate: mean KL divergence (nats), at most


QUANTS: dict[str, QuantType] = {q.name: q for q in (
    QuantType("f32", "convert", "LLAMA_FTYPE_ALL_F32", 32.0, 0.99, 0.001),
    QuantType("f16", "convert", "LLAMA_FTYPE_MOSTLY_F16", 16.0, 0.98, 0.005),
    QuantType("bf16", "convert", "LLAMA_FTYPE_MOSTLY_BF16", 16.0, 0.97, 0.01),
    QuantType("q8_0", "quantize", "LLAMA_FTYPE_MOSTLY_Q8_0", 8.5, 0.95, 0.02),
    QuantType("q6_k", "quantize", "LLAMA_FTYPE_MOSTLY_Q6_K", 6.6, 0.92, 0.05),
    QuantType("q5_k_m", "quantize", "LLAMA_FTYPE_MOSTLY_Q5_K_M", 5.7, 0.90, 0.08),
    QuantType("q5_k_s", "quantize", "LLAMA_FTYPE_MOSTLY_Q5_K_S", 5.5, 0.88, 0.10),
    QuantType("q5_0", "quantize", "LLAMA_FTYPE_MOSTLY_Q5_0", 5.5, 0.88, 0.10),
    QuantType("q4_k_m", "quantize", "LLAMA_FTYPE_MOSTLY_Q4_K_M", 4.8, 0.85, 0.15),
    QuantType("q4_k_s", "quantize", "LLAMA_FTYPE_MOSTLY_Q4_K_S", 4.6, 0.83, 0.20),
    QuantType("q4_0", "quantize", "LLAMA_FTYPE_MOSTLY_Q4_0", 4.5, 0.80, 0.25),
    QuantType("q3_k_m", "quantize", "LLAMA_FTYPE_MOSTLY_Q3_K_M", 3.9, 0.70, 0.50),
    QuantType("q2_k", "quantize", "LLAMA_FTYPE_MOSTLY_Q2_K", 3.0, 0.55, 1.00),
)}

FLOAT_FOR_DTYPE = {"float32": "f32", "float16": "f16", "bfloat16": "bf16"}


def known() -> str:
    return ", ".join(QUANTS)
