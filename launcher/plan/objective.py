"""What `training.objective` (sft | dpo | orpo | kto) changes in a step's memory and compute, as TRL 1.16 runs the
preference objectives (trl/trainer/dpo_trainer.py `_compute_loss`, trl/trainer/kto_trainer.py `_compute_loss`,
trl/experimental/orpo/orpo_trainer.py `concatenated_forward`):

- dpo: each micro-batch of `per_device_batch_size` pairs is 2x rows, the chosen and the rejected answers
  concatenated, through the policy (forward + backward); then, under no_grad, a reference forward of the same rows
  (through TRL's frozen "ref" copy of the starting adapter, a new one or `adapter.init_from`'s: the same base
  weights, no second model) unless `preference.precompute_reference`, which computes them once before training instead;
- orpo: reference-free; the same 2x rows forward + backward, through the model's own head (full logits);
- kto: the batch's rows forward + backward, a KL batch of as many mismatched rows forward under no_grad before it,
  and the reference forwards of both after it unless `preference.precompute_reference`.

DPO and KTO read their log-probabilities through TRL's fused LM head (`add_fused_lm_head`: tiles of at most
`FUSED_TOKEN_TILE` positions x `FUSED_VOCAB_TILE` vocabulary entries, never the whole logits); launcher/plan/
activations.py counts its memory, and the reference forward's transient memory. Torch-free, like the launcher.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer.spec.flops import FORWARD, TRAIN
from trainer.spec.job import JobSpec
from trainer.spec.preference import ONLY_FOR

PAIRED = ("dpo", "orpo")  # objectives whose micro-batch is each pair's chosen and rejected rows, concatenated
FUSED = ("dpo", "kto")  # objectives whose log-probabilities come from TRL's fused LM head
# trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE and trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE (TRL 1.16)
FUSED_TOKEN_TILE, FUSED_VOCAB_TILE = 4096, 32768
MIN_BATCH = {"kto": 2}  # TRL's KTOTrainer refuses a micro-batch of one row (its KL term needs two)
RECOMPUTE = TRAIN + FORWARD  # gradient checkpointing's second forward (trainer/spec/flops.py `dense_flops`)


def referenced(objective: str) -> bool:
    """Whether the objective compares against a reference (the objectives `preference.precompute_reference` is for)."""
    return objective in ONLY_FOR["precompute_reference"]


@dataclass(frozen=True)
class Passes:
    """Rows through the model per micro-batch, in units of `per_device_batch_size` rows."""

    trained: int  # forward + backward
    forward: int  # forward only, under no_grad, every step (reference, KL)
    precomputed: int  # reference forwards once before training (preference.precompute_reference)

    def flops_factor(self, recompute: bool) -> float:
        """A step's FLOPs over an SFT step's of the same batch (the one-off precompute pass aside)."""
        train = RECOMPUTE if recompute else TRAIN
        return (self.trained * train + self.forward * FORWARD) / train


def passes(objective: str, precompute: bool) -> Passes:
    reference = 0 if precompute or not referenced(objective) else 1
    if objective in PAIRED:
        return Passes(2, 2 * reference, 2 * (1 - reference) if referenced(objective) else 0)
    if objective == "kto":  # the policy's KL forward, then the reference forwards of the rows and the KL rows
        return Passes(1, 1 + 2 * reference, 2 * (1 - reference))
    return Passes(1, 0, 0)


def spec_passes(spec: JobSpec) -> Passes:
    return passes(spec.training.objective, spec.preference.precompute_reference)


def describe(spec: JobSpec) -> str | None:
    """The plan's line naming the objective and what it adds to a step (None for sft)."""
    objective, t = spec.training.objective, spec.training
    if objective == "sft":
        return None
    b, p = t.per_device_batch_size, spec_passes(spec)
    if objective in PAIRED:
        rows = f"2 x {b} rows per micro-batch (chosen + rejected)"
    else:
        rows = f"{b} rows per micro-batch + {b} mismatched KL rows (forward, no grad)"
    if not referenced(objective):
        extra = "no reference; full logits through the model's own head"
    elif p.precomputed:
        extra = "reference log-probs precomputed once before training (a forward pass over the data)"
    else:
        extra = "a reference forward of " + ("them" if objective in PAIRED else "both") + " each step"
    factor = p.flops_factor(t.gradient_checkpointing)
    return f"  {objective}: {rows}, {extra}; compute {factor:.2f} x an SFT step of {b} rows"
