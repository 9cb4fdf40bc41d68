"""One definition of the loss everywhere: the mean cross-entropy per trained token.

A trained token is a position whose next-token label is not -100 (labels shifted by one, as a causal LM
predicts). Training: the mean over the trained tokens of the whole optimizer step — every micro-batch of
the gradient accumulation, every rank (the Trainer counts them, `num_items_in_batch`, and sums over ranks
with `average_tokens_across_devices`). Evaluation (the Trainer's `eval_loss`) and the export's held-out
loss: the sum over all evaluated tokens divided by their count — token-weighted, not a mean of per-batch
means, which would weigh the tokens of a short batch more.

The Trainer gets `causal_lm_loss` as its `compute_loss_func` for every model. Left to itself, the
Trainer passes `num_items_in_batch` only to models whose class accepts loss kwargs; for the others
(`accepts_loss_kwargs = False`, e.g. some conditional-generation classes in transformers 5.23) it
averages per-micro-batch means — a different weighting under accumulation. With our function the
normalisation is the same for every model.

With `training.loss: chunked` (and `liger`, `cce`) the sum and count come from `Head.loss_sum`
(trainer/train/head.py: the LM head only at the trained positions, in chunks) instead of the model's logits;
the normalisation above is the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from trainer.train.head import Head

IGNORE = -100


def token_loss_sum(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed next-token cross-entropy (float32) over the trained positions, and their count."""
    target = labels[..., 1:].to(logits.device)
    pred = logits[..., :-1, :].float()
    total = F.cross_entropy(pred.reshape(-1, pred.size(-1)), target.reshape(-1), ignore_index=IGNORE,
                            reduction="sum")
    return total, (target != IGNORE).sum()


class TokenMeanLoss:
    """The Trainer's `compute_loss_func`. While `collect` is a list, each call adds its (sum, count) to it:
    evaluation reads the token-weighted mean from there (see `ResumableTrainer.evaluation_loop`). With a `head`,
    calls made inside its `capture` take the loss from the captured hidden states (trainer/train/head.py)."""

    def __init__(self, head: Head | None = None) -> None:
        self.collect: list[torch.Tensor] | None = None
        self.head = head

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        if self.head is not None and self.head.hidden is not None:
            total, count = self.head.loss_sum(outputs, labels)
        else:
            logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
            total, count = token_loss_sum(logits, labels)
        if self.collect is not None:
            self.collect[0] = self.collect[0] + total.detach().double().cpu()
            self.collect[1] = self.collect[1] + count.detach().cpu()
        if num_items_in_batch is None:  # evaluation: this batch's own mean
            return total / count.clamp(min=1)
        return total / torch.as_tensor(num_items_in_batch, device=total.device).clamp(min=1)

    def start(self) -> None:
        self.collect = [torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.long)]

    def finish(self) -> tuple[float, int]:
        """This rank's (sum, count) since `start`."""
        assert self.collect is not None
        total, count = float(self.collect[0]), int(self.collect[1])
        self.collect = None
        return total, count
