"""Rows -> a batch of tensors for a causal LM. The only module here that imports torch.

Three layouts:
- packed rows (`packing=True`): `[batch, longest row]`, padded with the pad id, labels -100 and
  position ids 0, 1, 2 ... on the padding, which therefore forms its own segment and never joins
  a real sample. No `attention_mask`: transformers builds the block-diagonal causal mask from the
  restarting position ids (sdpa / eager / flex attention).
- padding-free (`padding_free=True`): the whole micro-batch flattened into one row `[1, tokens]`
  with no padding at all (each sample's labels start with -100, trainer/data/render.py, so no
  sample's last token is trained to predict the next sample's first). Needed for flash-attention,
  which reads packed sequences only at batch size 1: the batch also carries the sequence
  boundaries as transformers' flash-attention kwargs (`cu_seq_lens_q/k`, int32, and
  `max_length_q/k`, Python ints), the same values `prepare_fa_kwargs_from_position_ids` would
  derive from the position ids, computed here once instead of in every layer (with a GPU sync
  each). Chosen by `training.padding_free`, and always for flash-attention with packing. With
  sdpa / eager it builds a dense `tokens x tokens` mask, so keep the padded layout there.
- one sample per row (`packing=False`): right padding with an `attention_mask`.

Every batch carries `use_cache=False`: transformers looks for packed sequences only when no KV
cache exists, and a forward pass with the config default `use_cache=True` creates one, which
silently lets packed samples attend to each other (checked in transformers 5.23).

`Collator.efficiency` = real tokens / token slots of every batch built so far (padding included).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trainer.data.render import IGNORE
from trainer.spec.job import JobSpec

Item = dict[str, list[int]]


def pad_id_of(tokenizer: Any) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0


def flash_kwargs(positions: list[int]) -> dict[str, Any]:
    """Sequence boundaries of one flattened row (a new sequence wherever the position id is 0) as transformers'
    flash-attention varlen kwargs."""
    import torch

    starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
    cu = torch.tensor(starts, dtype=torch.int32)
    longest = max(b - a for a, b in zip(starts, starts[1:], strict=False))
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu.clone(), "max_length_q": longest, "max_length_k": longest}


class Collator:
    def __init__(
        self,
        tokenizer: Any,
        packing: bool,
        *,
        padding_free: bool = False,
        pad_to_multiple_of: int | None = None,
    ):
        self.pad_id = pad_id_of(tokenizer)
        self.packing = packing
        self.padding_free = padding_free
        self.pad_to_multiple_of = pad_to_multiple_of
        self.real_tokens = 0
        self.slots = 0

    @classmethod
    def for_spec(cls, spec: JobSpec, tokenizer: Any) -> Collator:
        """The layout the spec needs: padding-free (one flattened row) with `training.padding_free`, and with
        flash-attention and packing, since flash-attention separates packed samples only at batch size 1."""
        flash = spec.model.attn_implementation.startswith("flash")
        flat = spec.training.padding_free or (flash and spec.data.packing)
        return cls(tokenizer, spec.data.packing, padding_free=flat)

    @property
    def efficiency(self) -> float:
        return self.real_tokens / self.slots if self.slots else 0.0

    def _width(self, n: int) -> int:
        m = self.pad_to_multiple_of
        return -(-n // m) * m if m else n

    def __call__(self, items: Sequence[Item]) -> dict[str, Any]:
        import torch

        if not items:
            raise ValueError("cannot collate an empty batch")
        if self.padding_free:
            items = [
                {
                    "input_ids": [t for it in items for t in it["input_ids"]],
                    "labels": [t for it in items for t in it["labels"]],
                    "position_ids": [t for it in items for t in it["position_ids"]],
                }
            ]
        width = self._width(max(len(it["input_ids"]) for it in items))
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
        positions = torch.zeros((len(items), width), dtype=torch.long)
        mask = torch.zeros((len(items), width), dtype=torch.long)
        for r, it in enumerate(items):
            n = len(it["input_ids"])
            ids[r, :n] = torch.tensor(it["input_ids"], dtype=torch.long)
            labels[r, :n] = torch.tensor(it["labels"], dtype=torch.long)
            positions[r, :n] = torch.tensor(it["position_ids"], dtype=torch.long)
            positions[r, n:] = torch.arange(width - n)  # padding: a segment of its own
            mask[r, :n] = 1
            self.real_tokens += n
        self.slots += ids.numel()
        batch: dict[str, Any] = {"input_ids": ids, "labels": labels, "position_ids": positions}
        if self.padding_free:
            batch |= flash_kwargs(positions[0].tolist())
        if not (self.packing or self.padding_free):
            batch["attention_mask"] = mask
        # transformers builds the per-sample mask only when there is no KV cache; with the config
        # default use_cache=True a forward pass makes one and packed samples see each other.
        batch["use_cache"] = False
        return batch
