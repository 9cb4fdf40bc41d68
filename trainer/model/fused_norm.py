"""`training.kernels: torch`: each RMSNorm as one autograd Function in plain PyTorch (CPU and CUDA, no package).

transformers' RMSNorms are 5-6 elementwise ops that autograd records one by one (an fp32 copy of the input, its
square, the mean, 1/rms, the normalised input, the scaled output) and differentiates one by one. `FusedRMSNorm`
runs the same forward ops without recording them, saves only the input (as it is) and 1/rms (fp32), and computes
the input's gradient in one formula: with x̂ = x·rstd and ĝ the gradient reaching x̂,
`dx = rstd · (ĝ - x̂ · mean(ĝ · x̂))`; the weight's gradient (full fine-tuning, `modules_to_save`) is the sum of
what reaches it. The output and the gradients keep each architecture's dtypes (`STYLES`):

- `cast`: Llama, Qwen2/3, Qwen3-MoE, Phi-3, Mistral: `weight * x̂.to(input dtype)` (the product in the weight's
  and input's promoted dtype);
- `float` with `offset`: Gemma (1, 2, 3): `(x̂ · (1 + weight)).to(input dtype)` in fp32; gpt-oss:
  `(weight · x̂).to(input dtype)` (offset 0).

`fuse_rms_norms(model)` replaces the `forward` of each module instance whose class is in `STYLES` (and comes from
transformers' own `transformers.models.*` modules, not remote code) with `types.MethodType`: the module, its
parameters and their names stay, so state dicts, checkpoints and adapters are unchanged. Before, for each class and
dtype in the model, it compares the fused output and input/weight gradients with the class's own forward on random
input and weights (`TOLERANCE`, relative to the largest value); a class that differs, that we do not know, or whose
forward was already replaced is left as it is, with a line saying why.
"""

from __future__ import annotations

import copy
import types
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Style:
    kind: str  # "cast": weight * x̂.to(dtype); "float": (x̂ * (offset + weight)).to(dtype) in fp32
    eps: str  # the module's attribute holding epsilon
    offset: float = 0.0


CAST = Style("cast", "variance_epsilon")
# Class name -> semantics, each read from its transformers 5.23 source (models/<arch>/modeling_<arch>.py).
STYLES: dict[str, Style] = {
    **dict.fromkeys(("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm", "Qwen3MoeRMSNorm",
                     "Phi3RMSNorm"), CAST),
    **dict.fromkeys(("GemmaRMSNorm", "Gemma2RMSNorm", "Gemma3RMSNorm"), Style("float", "eps", 1.0)),
    "GptOssRMSNorm": Style("float", "variance_epsilon", 0.0),
}
# max |fused - original| / max |original|, per dtype of the check: arithmetic order only, nothing more
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 4e-3, torch.bfloat16: 2e-2}


class FusedRMSNorm(torch.autograd.Function):
    """y = RMSNorm(x) with `Style` semantics; saves x and 1/rms only."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, eps: float, kind: str, offset: float) -> torch.Tensor:
        xf = x.to(torch.float32)
        rstd = xf.pow(2).mean(-1, keepdim=True).add_(eps).rsqrt_()
        xhat = xf * rstd
        ctx.save_for_backward(x, weight, rstd)
        ctx.kind, ctx.offset = kind, offset
        if kind == "cast":
            xn = xhat.to(x.dtype)
            return xn.mul_(weight) if xn.dtype == torch.result_type(weight, xn) else weight * xn
        scale = weight.to(torch.float32) + offset if offset else weight.to(torch.float32)
        return xhat.mul_(scale).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, rstd = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        xhat = x.to(torch.float32) * rstd
        gx = gw = None
        if ctx.kind == "cast":  # y = weight * xn, xn = xhat.to(x.dtype)
            if need_w:
                gw = _sum_to(grad * xhat.to(x.dtype), weight)
            gxhat = (grad * weight).to(x.dtype).to(torch.float32) if need_x else None
        else:  # y = (xhat * (offset + weight)).to(x.dtype), in fp32
            g32 = grad.to(torch.float32)
            if need_w:
                gw = _sum_to(g32 * xhat, weight)
            scale = weight.to(torch.float32) + ctx.offset if ctx.offset else weight.to(torch.float32)
            gxhat = g32 * scale if need_x else None
        if gxhat is not None:  # a new tensor (a product): written in place
            dot = (gxhat * xhat).mean(-1, keepdim=True)
            gx = gxhat.sub_(xhat.mul_(dot)).mul_(rstd).to(x.dtype)
        return gx, gw, None, None, None


def _sum_to(g: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The weight's gradient: summed over the leading (broadcast) dimensions, in the weight's dtype."""
    return g.sum(dim=tuple(range(g.dim() - weight.dim()))).to(weight.dtype) if g.dim() > weight.dim() \
        else g.to(weight.dtype)


def fused_forward(style: Style) -> Any:
    """A `forward(self, hidden_states)` to bind to a module of `style`."""

    def forward(self: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        return FusedRMSNorm.apply(hidden_states, self.weight, getattr(self, style.eps), style.kind, style.offset)

    return forward


def style_of(module: nn.Module) -> Style | None:
    """The verified semantics of a module's class: transformers' own classes in `STYLES` only."""
    cls = type(module)
    if not cls.__module__.startswith("transformers.models."):
        return None
    return STYLES.get(cls.__name__)


def _differences(module: nn.Module, style: Style, dtype: torch.dtype) -> dict[str, float]:
    """Relative max differences (output, input grad, weight grad) of fused vs original on random values."""
    gen = torch.Generator().manual_seed(0)
    probe = copy.deepcopy(module)
    weight = probe.weight
    dim = weight.shape[-1]
    with torch.no_grad():
        weight.copy_((torch.randn(weight.shape, generator=gen) * 0.5 + (1 - style.offset)).to(weight.dtype))
    weight.requires_grad_(True)
    x0 = (torch.randn(3, 5, dim, generator=gen) * 2).to(device=weight.device, dtype=dtype)
    g = torch.randn(3, 5, dim, generator=gen).to(device=weight.device)
    results = []
    for run in (lambda x: type(module).forward(probe, x), fused_forward(style).__get__(probe)):
        x = x0.clone().requires_grad_(True)
        y = run(x)
        gx, gw = torch.autograd.grad(y, (x, weight), g.to(y.dtype))
        results.append((y, gx, gw))
    out = {}
    for name, ref, got in zip(("output", "input gradient", "weight gradient"), *map(_detached, results), strict=True):
        if ref.dtype != got.dtype or ref.shape != got.shape:
            out[name] = float("inf")
            continue
        scale = ref.double().abs().max().clamp_min(1e-30)
        out[name] = float((got.double() - ref.double()).abs().max() / scale)
    return out


def _detached(tensors: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(t.detach() for t in tensors)


def check(module: nn.Module, style: Style, dtype: torch.dtype) -> tuple[str | None, float]:
    """(why the fused norm may not replace this module's class at `dtype`, or None; the largest difference)."""
    try:
        diffs = _differences(module, style, dtype)
    except Exception as e:  # noqa: BLE001 - whatever fails here, the class stays unfused and we say why
        return f"the check against its own forward failed ({type(e).__name__}: {e})", float("inf")
    tol = TOLERANCE.get(dtype, 1e-5)
    worst = max(diffs.values())
    bad = [f"{name} {diff:.2g}" for name, diff in diffs.items() if not diff <= tol]
    if bad:
        return (f"on random {str(dtype).removeprefix('torch.')} input it differs from its own forward by "
                f"{', '.join(bad)} (relative; tolerance {tol:g})"), worst
    return None, worst


def _problem(module: nn.Module, dtypes: set[torch.dtype]) -> tuple[str | None, float]:
    style = style_of(module)
    if style is None:
        return ("not a class whose semantics kubetune has verified (transformers' "
                f"{', '.join(sorted(STYLES))})"), 0.0
    if "forward" in vars(module):
        return "its forward is already replaced on the module (a hook or another patch)", 0.0
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 1 or weight.numel() == 0 or weight.is_meta:
        return "its weight is not one materialised vector here (sharded or offloaded)", 0.0
    worst = 0.0
    for dtype in sorted(dtypes, key=str):
        why, diff = check(module, style, dtype)
        worst = max(worst, diff)
        if why:
            return why, worst
    return None, worst


def fuse_rms_norms(model: nn.Module) -> tuple[dict[str, int], dict[str, str], float]:
    """Fuse the model's RMSNorms in place; -> (fused class -> count, unfused class -> why, largest difference).
    A class is fused in all its modules or in none."""
    model_dtype = getattr(model, "dtype", None)
    groups: dict[tuple[str, Any, str], list[nn.Module]] = defaultdict(list)
    for module in model.modules():
        if "rmsnorm" in type(module).__name__.lower():
            weight = getattr(module, "weight", None)
            key = (type(module).__name__, getattr(weight, "dtype", None), str(getattr(weight, "device", "")))
            groups[key].append(module)
    unfused: dict[str, str] = {}
    worst = 0.0
    for (name, wdtype, _), modules in groups.items():
        dtypes = {d for d in (wdtype, model_dtype) if isinstance(d, torch.dtype) and d.is_floating_point}
        why, diff = _problem(modules[0], dtypes | {torch.float32})  # fp32 too: the formula at a tight tolerance
        if why:
            unfused.setdefault(name, why)
        else:
            worst = max(worst, diff)
    fused: dict[str, int] = defaultdict(int)
    for (name, _, _), modules in groups.items():
        if name in unfused:
            continue
        forward = fused_forward(style_of(modules[0]))  # type: ignore[arg-type]
        for module in modules:
            module.forward = types.MethodType(forward, module)
        fused[name] += len(modules)
    return dict(fused), unfused, worst
