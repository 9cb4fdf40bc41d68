"""The LM head only where a label is, and the cross-entropy in chunks (`training.loss: chunked`, the default).

With `data.train_on: completions` most positions carry no label, and with Gemma 3's 262k vocabulary the
`[tokens x vocab]` logits are most of a small model's step and the largest activation of a big one. `chunked`:

1. The model's own forward runs as with `full` (every wrapper keeps its part: DDP, DeepSpeed, PEFT, accelerate's
   autocast, gradient checkpointing, the packed-mask hook of trainer/model/isolation.py), with `logits_to_keep=1`:
   its head computes one position per row. A forward hook on its decoder (`get_decoder()`) keeps the final hidden
   states, the very tensor the model's head reads.
2. The hidden states at the positions whose next-token label exists (labels shifted by one, != -100) go through the
   head's weight (`get_output_embeddings()`, tied or not) and the model's own final-logit transform (Gemma 2/3's
   `final_logit_softcapping`), `rows_per_chunk(vocab)` rows at a time, in float32.
3. Each chunk's gradient w.r.t. its hidden states is computed right after its loss (softmax - one-hot, through the
   soft cap, times the weight), so a chunk's logits are freed before the next one: nothing is recomputed in backward,
   and the whole logits tensor never exists. Backward scales the stored `[n, hidden]` gradient by the loss's.

On the first call the head's logits at the last position of each row are checked against the model's own (step 1):
a transformers release that changed the head is caught there, and the job goes on with `full` (ResumableTrainer).
`liger` and `cce` take the same hidden states and targets to trainer.model.kernels' fused linear cross-entropy.

Sharded strategies (`Head.whole_weight`): the loss runs after the model's forward. ZeRO-3 partitions the head's
weight outside the head's own forward: it is gathered for the loss (`deepspeed.zero.GatheredParameters`, read-only, a
collective entered once per forward on every rank) and partitioned again right after. Under FSDP2 accelerate 1.15
puts the final norm and the head (with a tied embedding) in one group not resharded after forward: the weight is whole
until backward; one still sharded (a DTensor) is unsharded around the loss by the owning module's `unshard()` /
`reshard()`. The weight is frozen and the chunks' gradients are computed in forward, so nothing reads it in backward
and the LoRA gradients are those of the full logits. `cce` reads it again in backward: under zero3/fsdp it runs as
`chunked`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer import say
from trainer.spec.training import loss_chunk_rows

IGNORE = -100

# Classes whose forward (transformers 5.23) is `lm_head(decoder(...).last_hidden_state[positions])`, then the config
# attribute of their final-logit soft cap (None: no transform). Gemma3ForConditionalGeneration applies none.
VERIFIED: dict[str, str | None] = {
    "LlamaForCausalLM": None, "MistralForCausalLM": None, "Qwen2ForCausalLM": None, "Qwen3ForCausalLM": None,
    "Qwen3MoeForCausalLM": None, "GptOssForCausalLM": None, "Phi3ForCausalLM": None, "GemmaForCausalLM": None,
    "Gemma2ForCausalLM": "final_logit_softcapping", "Gemma3ForCausalLM": "final_logit_softcapping",
    "Gemma3ForConditionalGeneration": None,
}
CHECK_TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}  # of max |logit|


class HeadMismatch(RuntimeError):
    """The model's own logits differ from the head's: its forward does something the head does not."""


def rows_per_chunk(vocab: int) -> int:
    """Trained positions per chunk (the spec's `loss_chunk_rows`, which the planner counts too)."""
    return loss_chunk_rows(vocab)


def apply_head(hidden: torch.Tensor, weight: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """float32 logits of `hidden` [n, h], as the model's head computes them."""
    logits = F.linear(hidden.to(weight.dtype), weight).float()
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _chunk(h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, softcap: float | None,
           grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Summed cross-entropy of one chunk, and d(sum)/d(h) when `grad`; at most two float32 [rows, vocab] alive."""
    z = F.linear(h.to(weight.dtype), weight).float()
    t = None
    if softcap is not None:
        t = z.div_(softcap).tanh_()  # in place: z is t now
        z = t * softcap
    lse = torch.logsumexp(z, dim=-1)
    total = (lse - z.gather(1, y[:, None]).squeeze(1)).sum()
    if not grad:
        return total, None
    p = z.sub_(lse[:, None]).exp_()  # softmax, in place
    p[torch.arange(len(y), device=y.device), y] -= 1.0
    if t is not None:
        p.mul_(t.mul_(t).neg_().add_(1.0))  # d(cap * tanh(l / cap)) / dl = 1 - tanh²
    return total, (p.to(weight.dtype) @ weight).to(h.dtype)


class ChunkedCrossEntropy(torch.autograd.Function):
    """sum over rows of CE(softcap(hidden @ weight.T), targets); the gradient w.r.t. `hidden` only (the head's weight
    is frozen: `choose` leaves trained heads to the full path)."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None,
                rows: int) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grads = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for start in range(0, hidden.shape[0], rows):
            part, g = _chunk(hidden[start:start + rows], weight, targets[start:start + rows], softcap, grads is not None)
            total += part
            if grads is not None:
                grads[start:start + rows] = g
        ctx.save_for_backward(grads if grads is not None else hidden.new_empty(0))
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None]:
        (grads,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        return grads * grad_total.to(grads.dtype), None, None, None, None


def chunked_loss_sum(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, softcap: float | None,
                     rows: int) -> torch.Tensor:
    """float32 summed cross-entropy over `hidden` [n, h] -> `targets` [n], `rows` rows at a time."""
    if weight.requires_grad:
        raise ValueError("the chunked loss computes no gradient for the head's weight: train it with `training.loss: full`")
    if hidden.requires_grad and torch.is_grad_enabled():
        return ChunkedCrossEntropy.apply(hidden, weight, targets, softcap, rows)
    with torch.no_grad():
        parts = [_chunk(hidden[s:s + rows], weight, targets[s:s + rows], softcap, False)[0]
                 for s in range(0, hidden.shape[0], rows)]
    return torch.stack(parts).sum() if parts else torch.zeros((), dtype=torch.float32, device=hidden.device)


def labelled(hidden: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The hidden states [n, h] whose next-token label exists, and those labels [n]."""
    target = labels[..., 1:].to(hidden.device)
    keep = target != IGNORE
    return hidden[..., :-1, :][keep], target[keep].long()


@dataclass
class Head:
    """The model's LM head as the loss uses it; `hidden` holds the decoder's output during one `capture`. `root`: the
    model the strategy wraps (where an FSDP2 module owning the head is found)."""

    decoder: nn.Module
    linear: nn.Linear
    softcap: float | None
    kind: str = "chunked"  # chunked | liger | cce
    rows: int = 0  # rows per chunk (0: rows_per_chunk(vocab))
    hidden: torch.Tensor | None = None
    checked: bool = False
    root: nn.Module | None = None
    gathers: int = 0  # losses computed from a weight gathered from its shards (ZeRO-3, FSDP2)

    @contextmanager
    def capture(self) -> Iterator[None]:
        def keep(module: nn.Module, args: Any, output: Any) -> None:
            self.hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]

        handle = self.decoder.register_forward_hook(keep)
        try:
            yield
        finally:
            handle.remove()
            self.hidden = None

    @contextmanager
    def whole_weight(self) -> Iterator[torch.Tensor]:
        """The head's whole weight while the loss runs (module docstring): gathered from its shards under ZeRO-3,
        unsharded if FSDP2 left it sharded, as it is otherwise."""
        weight = self.linear.weight
        if hasattr(weight, "ds_id") and weight.numel() != self.linear.in_features * self.linear.out_features:
            import deepspeed  # a partitioned ZeRO-3 parameter (a whole one, persistent or held, is used as it is)

            self._gathered("ZeRO-3")
            with deepspeed.zero.GatheredParameters([weight], modifier_rank=None):  # a collective, on every rank
                yield _whole(self.linear)
            return
        owner = _fsdp_owner(self.root, self.linear) if _is_dtensor(weight) else None
        if owner is None:
            yield _whole(self.linear)
            return
        owner.unshard()
        self._gathered("FSDP2")
        try:
            yield _whole(self.linear)
        finally:
            owner.reshard()

    def _gathered(self, how: str) -> None:
        if not self.gathers:
            say.say(f"training.loss: {self.kind}: the LM head's weight is gathered from its {how} shards for the loss",
                    main_only=True)
        self.gathers += 1

    def check(self, logits: torch.Tensor, weight: torch.Tensor) -> None:
        """The model's own logits at each row's last position (`logits_to_keep=1`) against the head's."""
        assert self.hidden is not None
        with torch.no_grad():
            ours = apply_head(self.hidden[:, -1], weight, self.softcap)
            theirs = logits[:, -1].float()
            diff, scale = float((ours - theirs).abs().max()), float(theirs.abs().max())
        if diff > CHECK_TOLERANCE.get(weight.dtype, 5e-2) * max(scale, 1e-6):
            raise HeadMismatch(f"the chunked loss's logits differ from the model's own by {diff:.3g} (max |logit| "
                               f"{scale:.3g})")
        say.say(f"training.loss: {self.kind}: the LM head at the trained positions only (its logits checked against "
                "the model's own)", main_only=True)
        self.checked = True

    def loss_sum(self, outputs: Any, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed float32 cross-entropy over the trained positions of the captured hidden states, and their count."""
        assert self.hidden is not None, "Head.loss_sum outside Head.capture"
        hidden, targets = labelled(self.hidden, labels)
        count = torch.as_tensor(targets.numel(), device=hidden.device)
        with self.whole_weight() as weight:
            if not self.checked:
                self.check(outputs["logits"] if isinstance(outputs, dict) else outputs[0], weight)
            if self.kind in ("liger", "cce"):
                from trainer.model.kernels import fused_linear_cross_entropy

                total = fused_linear_cross_entropy(self.kind, hidden, weight, targets, self.softcap)
                return total.float(), count
            rows = self.rows or rows_per_chunk(weight.shape[0])
            return chunked_loss_sum(hidden, weight, targets, self.softcap, rows), count


def _is_dtensor(t: torch.Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _fsdp_owner(root: nn.Module | None, linear: nn.Module) -> Any:
    """The FSDP2 module (`fully_shard`) whose parameter group holds `linear`'s weight: `linear` or its nearest
    wrapped ancestor under `root`."""
    from torch.distributed.fsdp import FSDPModule

    named = {m: n for n, m in root.named_modules()} if root is not None else {}
    target = named.get(linear)
    owners = [(len(n), m) for m, n in named.items() if isinstance(m, FSDPModule) and target is not None
              and (not n or f"{target}.".startswith(f"{n}."))]
    if not owners:
        raise RuntimeError("the LM head's weight is a sharded DTensor, but no FSDP2 module over it was found")
    return max(owners, key=lambda o: o[0])[1]


def _whole(linear: nn.Linear) -> torch.Tensor:
    """`linear`'s weight, checked to be whole ([out_features, in_features]), as a plain tensor."""
    weight = linear.weight
    if tuple(weight.shape) != (linear.out_features, linear.in_features) or _is_dtensor(weight):
        raise RuntimeError(f"the LM head's weight is {type(weight).__name__} {tuple(weight.shape)} where the loss "
                           f"needs it whole ({linear.out_features}, {linear.in_features})")
    return weight


def choose(kind: str, model: Any, *, sharded: str | None, say: Callable[[str], None]) -> Head | None:
    """The head for `training.loss` `kind` on `model` (a PeftModel or a transformers model), or None for the full
    path: `full`, an unverified class, or a head that trains or has a bias. `sharded`: the name of a strategy that
    shards the weights (`zero3`, `fsdp`), where `cce` runs as `chunked` (module docstring)."""
    if kind == "full":
        return None
    fallback = f"training.loss: {kind} falls back to the full logits (as `full`): "
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    name = type(base).__name__
    if name not in VERIFIED:
        say(fallback + f"{name}'s LM head is not one kubetune has verified (known: {', '.join(sorted(VERIFIED))})")
        return None
    linear = base.get_output_embeddings()
    if type(linear) is not nn.Linear or linear.weight.requires_grad or linear.bias is not None:
        say(fallback + "the LM head is adapted or trained (e.g. an adapter on `lm_head`), or has a bias")
        return None
    if kind == "cce" and sharded is not None:
        say(f"training.loss: cce runs as `chunked` under `{sharded}`: Cut Cross-Entropy reads the LM head's weight "
            "again in backward, when it is sharded again")
        kind = "chunked"
    attr = VERIFIED[name]
    softcap = getattr(base.config, attr, None) if attr else None
    return Head(decoder=base.get_decoder(), linear=linear, softcap=float(softcap) if softcap else None, kind=kind,
                root=model)


def head_loss(loss_fn: Any, compute: Callable[..., Any], model: Any, inputs: dict[str, Any], return_outputs: bool,
              num_items_in_batch: Any) -> Any:
    """The Trainer's `compute_loss` (`compute`, whose `compute_loss_func` is `loss_fn`, a TokenMeanLoss) with
    `loss_fn.head`: the model's head computes one position per row (`logits_to_keep=1`) and `loss_fn` takes the loss
    from the decoder's hidden states. A head that disagrees with the model's own logits (checked on the first call)
    is dropped with a warning, and this and every later call take the full path."""
    head = loss_fn.head
    if head is None or "labels" not in inputs:
        return compute(model, inputs, return_outputs, num_items_in_batch)
    try:
        with head.capture():  # a copy of `inputs`: the Trainer pops the labels off the dict it gets
            return compute(model, {**inputs, "logits_to_keep": 1}, return_outputs, num_items_in_batch)
    except HeadMismatch as e:
        loss_fn.head = None
        say.warn(f"training.loss: {head.kind} falls back to the full logits (as `full`): {e}")
        return compute(model, inputs, return_outputs, num_items_in_batch)
