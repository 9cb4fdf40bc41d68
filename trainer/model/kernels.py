"""The GPU options of `training`: fused kernels, fused linear cross-entropy, torch.compile, and their checks.

- `training.kernels: liger` (`apply_kernels`): Liger Kernel's Triton RMSNorm, RoPE and SwiGLU / GeGLU, through its
  public per-architecture functions (`liger_kernel.transformers.apply_liger_kernel_to_llama`, `..._qwen2`, ...,
  found by the model's `model_type` in its public table `MODEL_TYPE_TO_APPLY_LIGER_FN`), applied to the loaded
  base model before the adapter wraps it (Liger rebinds each MLP's `forward`, which then calls the LoRA-wrapped
  projections). Liger's own loss patches stay off: the loss is `training.loss`'s. An architecture Liger has no
  function for is refused by name. Liger's functions also replace the classes in the architecture's transformers
  module (its design): models built later in the same process get the kernels too.
- `training.kernels: torch` (`apply_kernels`): RMSNorm as one autograd Function in plain PyTorch, on CPU and CUDA
  (trainer/model/fused_norm.py): each norm class of the model is checked against its own forward at start-up and
  left as it is, with a line saying why, where it differs or is not one we know.
- `training.loss: liger | cce` (`fused_linear_cross_entropy`): the LM head and the cross-entropy in one kernel that
  never holds the `[tokens x vocab]` logits: Liger's `LigerFusedLinearCrossEntropyLoss` or Cut Cross-Entropy's
  `linear_cross_entropy` (its default implementation, `cce`, with its default gradient filtering). The caller
  (trainer/train/head.py) passes only the positions that have a label.
- `training.compile` (`compile_model`): `torch.compile` of each decoder layer in place (`nn.Module.compile`), after
  the adapter: the state dict's names do not change (no `_orig_mod.`), so checkpoints and the saved adapter are as
  without it, and gradient checkpointing stays outside the compiled region (transformers checkpoints a decoder
  layer around its call). The layers share one compiled graph; a new row length recompiles once, then the length
  is dynamic.

`preflight(spec)` runs at trainer start-up (trainer/model/load.py `check_hardware`): an option whose package or
CUDA is missing fails the job at once (exit 2) with the field and the fix, not after the model has loaded. What
the spec alone shows wrong (these options on `resources.gpu: none`, `padding_free` without flash-attention) is
refused earlier, by the spec's validation (trainer/spec/training.py `gpu_option_problems`).
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

import torch

from trainer.model.errors import ModelError
from trainer.spec.job import JobSpec

IGNORE = -100
# option -> (import name, the pip requirement we tested against)
PACKAGES = {"liger": ("liger_kernel", "liger-kernel==0.8.5"), "cce": ("cut_cross_entropy", "cut-cross-entropy==25.1.1")}
FALLBACK = {"training.kernels": "none", "training.loss": "chunked"}


def require(field: str, kind: str, *, cuda: bool | None = None) -> None:
    """Refuse `field: kind` (`liger` / `cce`) unless CUDA, Triton and the package are here."""
    module, pin = PACKAGES[kind]
    fix = f"`{field}: {FALLBACK[field]}` (e.g. `--set {field}={FALLBACK[field]}`)"
    if not (torch.cuda.is_available() if cuda is None else cuda):
        raise ModelError(f"{field}: `{kind}` runs Triton kernels on a CUDA GPU and this machine has none: use {fix}, "
                         "or run the job on a GPU (resources.gpu)")
    missing = [name for name in (module, "triton") if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelError(f"{field}: `{kind}` needs the Python package(s) {', '.join(missing)} ({pin}), which this "
                         f"environment does not have (the trainer image leaves them out): install `{pin}` in the "
                         f"image, or use {fix}")


def preflight(spec: JobSpec, *, cuda: bool | None = None) -> None:
    """Fail at start-up (ModelError, exit 2) when a GPU option of the spec cannot run here."""
    t = spec.training
    cuda = torch.cuda.is_available() if cuda is None else cuda
    if t.kernels == "liger":
        require("training.kernels", "liger", cuda=cuda)
    if t.loss in ("liger", "cce"):
        require("training.loss", t.loss, cuda=cuda)
    if t.compile and not cuda:
        raise ModelError("training.compile: true needs a CUDA GPU here (on CPU, inductor compiles C++ for minutes); "
                         "set `training.compile: false`")
    if t.padding_free and cuda:
        from transformers.utils import is_flash_attn_2_available

        if not is_flash_attn_2_available():
            raise ModelError("training.padding_free: true runs flash-attention's varlen kernels, and the flash-attn "
                             "package (built for this GPU and torch) is not installed here: install it in the image, "
                             "or set `training.padding_free: false` and `model.attn_implementation: sdpa` (packed "
                             "samples stay apart there too)")


def apply_kernels(model: Any, kernels: str) -> str | None:
    """Liger's or our fused kernels on the loaded base model (before the adapter); returns what was done, None for
    `none`."""
    if kernels == "none":
        return None
    if kernels == "torch":
        return fuse_norms(model)
    require("training.kernels", kernels)
    from liger_kernel.transformers.monkey_patch import MODEL_TYPE_TO_APPLY_LIGER_FN

    model_type = getattr(model.config, "model_type", "?")
    apply = MODEL_TYPE_TO_APPLY_LIGER_FN.get(model_type)
    if apply is None:
        raise ModelError(f"training.kernels: liger has no kernels for {type(model).__name__} (model_type "
                         f"`{model_type}`); Liger Kernel supports {', '.join(sorted(MODEL_TYPE_TO_APPLY_LIGER_FN))}: "
                         "use `training.kernels: none` for this model")
    accepted = inspect.signature(apply).parameters
    off = {k: False for k in ("cross_entropy", "fused_linear_cross_entropy") if k in accepted}  # ours: training.loss
    apply(model=model, **off)
    patched = [k for k in ("rope", "rms_norm", "swiglu", "geglu", "layer_norm") if k in accepted]
    return f"Liger Kernel {apply.__name__} ({', '.join(patched)}) on {type(model).__name__}"


def fuse_norms(model: Any) -> str:
    """`training.kernels: torch`: the fused RMSNorm where it matches the original; each class left alone is said."""
    from trainer import say as out
    from trainer.model.fused_norm import fuse_rms_norms

    fused, unfused, worst = fuse_rms_norms(model)
    for name, why in unfused.items():
        out.say(f"training.kernels: torch leaves {name} unfused: {why}", main_only=True)
    if not fused:
        return f"training.kernels: torch fused no RMSNorm in {type(model).__name__} (it runs as with `none`)"
    done = ", ".join(f"{count} {name}" for name, count in fused.items())
    return (f"training.kernels: torch: fused RMSNorm in {done} (checked against the originals' forward and "
            f"gradients on random input: largest relative difference {worst:.1g})")


def fused_linear_cross_entropy(kind: str, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                               softcap: float | None) -> torch.Tensor:
    """The summed (float32) cross-entropy of `hidden @ weight.T` (optionally soft-capped: `softcap * tanh(z /
    softcap)`, as Gemma's `final_logit_softcapping`) against `targets` over the n rows: hidden [n, h],
    weight [vocab, h], targets [n] int64 (-100: not counted). `kind`: `liger` or `cce`."""
    if kind not in PACKAGES:
        raise ValueError(f"unknown fused cross-entropy {kind!r}: `liger` or `cce`")
    require("training.loss", kind, cuda=hidden.is_cuda)
    if hidden.shape[0] == 0:
        return (hidden.sum() * 0).float()  # nothing to train on: zero, still part of the graph
    if kind == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        loss = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE, reduction="sum", softcap=softcap)
        return loss(weight.to(hidden.dtype), hidden, targets).float()
    from cut_cross_entropy import linear_cross_entropy

    return linear_cross_entropy(hidden, weight.to(hidden.dtype), targets, ignore_index=IGNORE, softcap=softcap,
                                reduction="sum").float()


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The decoder layers of a transformers (or PEFT-wrapped) model: the modules of its `_no_split_modules` classes."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    return [m for m in base.modules() if type(m).__name__ in names]


def compile_model(model: Any, *, backend: str = "inductor", dynamic: bool | None = None) -> int:
    """`torch.compile` each decoder layer in place; returns how many. Refuses a model without known layers."""
    layers = decoder_layers(model)
    if not layers:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        raise ModelError(f"training.compile: found no decoder layer to compile in {type(base).__name__} (its "
                         "`_no_split_modules` names none): set `training.compile: false` for this model")
    for layer in layers:
        layer.compile(backend=backend, dynamic=dynamic)
    return len(layers)
