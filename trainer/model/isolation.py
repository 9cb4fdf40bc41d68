"""Packed samples see only themselves: the start-up check, and the masks for models that need them.

A packed row holds several samples back to back, each with position ids restarting at 0 and no
`attention_mask` (trainer/data/collator.py). transformers (5.23) turns restarting position ids
into block-diagonal causal masks inside `create_causal_mask` / `create_sliding_window_causal_mask`
— but only when the model's forward passes its `position_ids` to them. Llama, Qwen2/3, Qwen3-MoE,
Gemma 3 and Phi-3 do; gpt-oss's `GptOssModel.forward` does not, so there every query of a packed
row attends to the samples before it (logits off by up to 2.0 on a tiny gpt-oss, from layer 0).
Nothing fails: the model just trains on the wrong context.

`check(model, collator)` proves isolation on the real model, in seconds: two rows built by the
training collator — one packing two samples, one holding a third sample and its padding — run in
one forward, and each sample's logits are compared with the same sample run alone. The samples
are longer than the model's sliding window (up to 1024 tokens), so windowed layers are covered too.

`ensure_isolated(model, collator)` runs at the start of every packed training job (all ranks
together: under ZeRO-3 / FSDP a forward is collective). When the check fails and the model's
decoder takes a prepared mask mapping (gpt-oss: `attention_mask` may be a dict of masks by layer
type), a forward pre-hook builds the masks from the position ids with transformers' own mask
functions, and the check runs again. Still different: the job stops with an error naming the
architecture and the way out, `data.packing: false`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback

from trainer.model.errors import ModelError

# Largest |packed - alone| logit difference, relative to the largest |logit|, that is rounding: the two runs
# multiply matrices of other shapes. Samples that see each other differ by far more (0.3 relative on the tiny
# gpt-oss; a real model's next-token prediction changes with its context).
TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 3e-2}
WAY_OUT = "Set `data.packing: false` (one sample per row) to train this model."
MAX_WINDOW = 1024  # longer windows (Mistral's 4096) are exercised only up to this: seconds, not minutes
SHORT = 24  # tokens of the shortest check sample beyond the sliding window


@dataclass(frozen=True)
class Result:
    max_diff: float  # largest |packed - alone| logit difference over the samples
    scale: float  # largest |logit| of the samples alone
    tolerance: float  # of max_diff / scale
    tokens: tuple[int, ...]  # the samples' lengths

    @property
    def relative(self) -> float:
        return self.max_diff / max(self.scale, 1e-6)

    @property
    def ok(self) -> bool:
        return self.relative <= self.tolerance

    def describe(self) -> str:
        return f"max |Δlogit| {self.max_diff:.2g} of max |logit| {self.scale:.3g}, lengths {self.tokens}"


def architecture(model: Any) -> str:
    config = _config(model)
    names = getattr(config, "architectures", None) or [type(model).__name__]
    return f"{names[0]} ({getattr(config, 'model_type', '?')})"


def _config(model: Any) -> Any:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "config", None)


def _dtype(model: Any) -> torch.dtype:
    embed = _decoder(model).get_input_embeddings()
    return embed.weight.dtype


def _decoder(model: Any) -> torch.nn.Module:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder()


def _samples(model: Any, vocab: int, seed: int) -> list[list[int]]:
    """Three random token sequences, each longer than the sliding window (if any)."""
    config = _config(model)
    window = min(int(getattr(config, "sliding_window", None) or 0), MAX_WINDOW)
    lengths = (window + SHORT + 13, window + SHORT + 5, window + SHORT)
    g = torch.Generator().manual_seed(seed)
    high = min(vocab, 32000)  # plain vocabulary ids: special tokens sit at the top of most vocabularies
    return [torch.randint(3, high, (n,), generator=g).tolist() for n in lengths]


def _device(model: Any) -> torch.device:
    return next(p.device for p in model.parameters() if p.device.type != "meta")


def check(model: Any, collator: Callable[[list[dict[str, list[int]]]], dict[str, Any]], *, vocab: int,
          seed: int = 0, forward: Callable[..., Any] | None = None) -> Result:
    """Logits of samples packed by `collator` vs the same samples alone. `forward` is the module to call (the
    trainer's wrapped model under DDP / DeepSpeed / FSDP); `model` the unwrapped one, for its config and mode."""
    forward = forward or model
    a, b, c = _samples(model, vocab, seed)

    def item(*parts: list[int]) -> dict[str, list[int]]:
        return {"input_ids": [t for p in parts for t in p], "labels": [t for p in parts for t in p],
                "position_ids": [i for p in parts for i in range(len(p))]}

    device = _device(model)
    was_training = model.training
    model.eval()  # no dropout: both runs must compute the same function
    try:
        with torch.no_grad():
            packed = _logits(forward, collator([item(a, b), item(c)]), device)
            alone = [_logits(forward, collator([item(s)]), device)[0, : len(s)] for s in (a, b, c)]
    finally:
        model.train(was_training)
    if packed.shape[0] == 1:  # padding-free layout (flash-attention): one flattened row a + b + c
        got = [packed[0, : len(a)], packed[0, len(a): len(a) + len(b)], packed[0, len(a) + len(b): len(a) + len(b) + len(c)]]
    else:
        got = [packed[0, : len(a)], packed[0, len(a): len(a) + len(b)], packed[1, : len(c)]]
    diff = max(float((x.float() - y.float()).abs().max()) for x, y in zip(got, alone, strict=True))
    scale = max(float(y.float().abs().max()) for y in alone)
    return Result(diff, scale, TOLERANCE.get(_dtype(model), 3e-2), (len(a), len(b), len(c)))


def _logits(forward: Callable[..., Any], batch: dict[str, Any], device: torch.device) -> torch.Tensor:
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    batch.pop("labels", None)
    return forward(**batch).logits


# -- masks for decoders that do not build them from position ids ---------------------------------
def _mask_builders() -> dict[str, Callable[..., Any]]:
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    return {"full_attention": create_causal_mask, "sliding_attention": create_sliding_window_causal_mask}


def can_build_masks(model: Any) -> bool:
    """Every layer type of the decoder is one whose mask we build (whether the decoder takes them, the check
    run with the masks shows)."""
    types = set(getattr(_decoder(model).config, "layer_types", None) or ["full_attention"])
    return types <= set(_mask_builders())


def install_packed_masks(model: Any) -> torch.utils.hooks.RemovableHandle:
    """A forward pre-hook on the decoder: with position ids and no attention mask (and no KV cache), pass the
    block-diagonal masks built from the position ids, one per layer type."""
    decoder = _decoder(model)
    builders = _mask_builders()
    types = sorted(set(getattr(decoder.config, "layer_types", None) or ["full_attention"]))

    def hook(module: torch.nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[tuple, dict[str, Any]] | None:
        positions = kwargs.get("position_ids")
        if positions is None or kwargs.get("attention_mask") is not None or kwargs.get("past_key_values") is not None:
            return None
        ids = kwargs.get("input_ids", args[0] if args else None)
        embeds = kwargs.get("inputs_embeds")
        if embeds is None:  # the mask functions read batch size, length, dtype and device only
            weight = module.get_input_embeddings().weight
            embeds = torch.empty((*ids.shape, 0), dtype=weight.dtype, device=ids.device)
        masks = {t: builders[t](config=module.config, inputs_embeds=embeds, attention_mask=None,
                                past_key_values=None, position_ids=positions) for t in types}
        return args, {**kwargs, "attention_mask": masks}

    return decoder.register_forward_pre_hook(hook, with_kwargs=True)


def ensure_isolated(model: Any, collator: Callable[..., dict[str, Any]], *, vocab: int,
                    forward: Callable[..., Any] | None = None, say: Callable[[str], None] = print) -> Result:
    """Stop the job (ModelError) unless packed samples compute what they compute alone; builds the masks
    where the model does not (see the module docstring). Collective under sharded strategies."""
    result = check(model, collator, vocab=vocab, forward=forward)
    arch = architecture(model)
    if result.ok:
        say(f"packing check: packed samples compute what they compute alone on {arch} ({result.describe()})")
        return result
    before = result.describe()
    if can_build_masks(model):
        handle = install_packed_masks(model)
        try:
            result = check(model, collator, vocab=vocab, forward=forward)
        except (TypeError, ValueError, RuntimeError, AttributeError):  # the decoder takes no mask mapping
            handle.remove()
            raise ModelError(f"packing check failed on {arch}: samples packed into one row attend to each other "
                             f"({before}), and its decoder takes no prepared masks. {WAY_OUT}") from None
        if not result.ok:
            handle.remove()
        else:
            say(f"packing check: {arch} does not keep packed samples apart by itself ({before}); kubetune builds "
                f"the block-diagonal masks for it, and now they compute what they compute alone ({result.describe()})")
            return result
    raise ModelError(
        f"packing check failed on {arch}: samples packed into one row attend to each other ({result.describe()} "
        f"against the same samples alone; relative tolerance {result.tolerance:g}). Training would "
        f"silently learn from the wrong context. {WAY_OUT}"
    )


class PackingCheck(TrainerCallback):
    """Runs `ensure_isolated` once, when training begins: on the model as the strategy wrapped it, every rank
    together. `trainer` is set once the Trainer exists."""

    def __init__(self, collator: Callable[..., dict[str, Any]], vocab: int, say: Callable[[str], None]):
        self.collator, self.vocab, self.say = collator, vocab, say
        self.trainer: Any = None
        self.result: Result | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.result is None:
            t = self.trainer
            self.result = ensure_isolated(t.model, self.collator, vocab=self.vocab, forward=t.model_wrapped,
                                          say=self.say)
