"""One RMSNorm's forward + backward: transformers' own vs `training.kernels: torch` (trainer/model/fused_norm.py).

    .venv/bin/python bench/fused_norm.py [--tokens 256 --hidden 640 --dtype float32 --iters 200 --train-weight]

Gemma 3 270M's shape by default (hidden 640, the quickstart's 256-token rows), each of Llama's, Gemma 3's and
gpt-oss's norm classes, the weight frozen as under LoRA (`--train-weight`: trained too). Prints the median time
of `--iters` forward + backward passes (after 20 warm-up passes) for each, and the largest relative difference
of the output and input gradient. Numbers from a busy machine are noisy: run it on an idle one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.model.fused_norm import fused_forward, style_of  # noqa: E402


def timed(f: Any, x: torch.Tensor, g: torch.Tensor, iters: int) -> float:
    for _ in range(20):
        f(x).backward(g)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        f(x).backward(g)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--hidden", type=int, default=640)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--train-weight", action="store_true")
    a = p.parse_args()
    dtype = getattr(torch, a.dtype)
    torch.manual_seed(0)
    print(f"[1, {a.tokens}, {a.hidden}] {a.dtype}, {torch.get_num_threads()} threads, weight "
          f"{'trained' if a.train_weight else 'frozen'}")
    for cls in (LlamaRMSNorm, Gemma3RMSNorm, GptOssRMSNorm):
        norm = cls(a.hidden).to(dtype)
        torch.nn.init.normal_(norm.weight, 0.0, 0.5)
        norm.weight.requires_grad_(a.train_weight)
        fused = fused_forward(style_of(norm)).__get__(norm)
        x = torch.randn(1, a.tokens, a.hidden, dtype=dtype, requires_grad=True)
        g = torch.randn_like(x)
        y0, y1 = norm(x), fused(x)  # the differences below are of detached values
        (g0,), (g1,) = torch.autograd.grad(y0, x, g), torch.autograd.grad(y1, x, g)
        diff = max(float((b.float() - r.float()).abs().max() / r.float().abs().max()) for r, b in ((y0.detach(), y1.detach()), (g0, g1)))
        t0, t1 = timed(norm, x, g, a.iters), timed(fused, x, g, a.iters)
        print(f"{cls.__name__:<15} original {t0 * 1e6:8.0f} us   fused {t1 * 1e6:8.0f} us   {t0 / t1:5.2f}x   "
              f"max relative difference {diff:.1g}")


if __name__ == "__main__":
    main()
