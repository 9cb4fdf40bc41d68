"""`resources.deadline`: the training Job's `activeDeadlineSeconds`, stated in the spec or estimated (`auto`).

The estimate is deliberately pessimistic: a deadline that stops a healthy run is worse than one that
lets a hung run hold its GPUs a few hours longer. Its parts, each printed by `launch submit`:

- tokens: at most `training.max_steps` x the global batch (`per_device_batch_size` x `grad_accum` x
  the world size) x `data.max_seq_len` (packed rows are that long; unpacked ones are shorter);
- FLOPs: 6 per parameter and token (forward 2, backward 4: a LoRA run skips the frozen weights'
  gradients, so this over-counts), 8 with gradient checkpointing (the forward again): `dense_flops` of
  trainer/spec/flops.py, the formula the trainer's MFU counts with; every parameter counts, the embedding too.
  A preference objective (launcher/plan/objective.py) trains its rows per batch row (dpo, orpo: 2, chosen and
  rejected) and adds 2 per parameter and token of each forward-only row: the reference and KL forwards of each
  step, or with `preference.precompute_reference` the reference pass before training, counted over the rows the
  steps read (the pass reads the whole training set once, which `launch` does not read);
- speed: `DEADLINE_MFU` of the slowest board `resources.gpu` may land on (the catalog: trainer/spec/gpus.py);
- then `DEADLINE_FACTOR` times that, plus `DEADLINE_STARTUP_HOURS`, rounded up to whole hours.

Without `training.max_steps` the run's length depends on the data, which `launch` does not read for a
cluster job, so `auto` sets no deadline and says how to set one; nor for a CPU job (no GPUs to hold).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from launcher.plan.objective import spec_passes
from trainer.spec.flops import FORWARD, dense_flops
from trainer.spec.gpus import KINDS
from trainer.spec.job import JobSpec
from trainer.spec.resources import DEADLINE_FACTOR, DEADLINE_MFU, DEADLINE_STARTUP_HOURS

HOUR = 3600


@dataclass(frozen=True)
class Deadline:
    seconds: int | None  # activeDeadlineSeconds; None: no deadline
    line: str  # what `launch submit` prints about it ("": nothing, for a CPU job without a stated deadline)


def hours(seconds: float) -> str:
    return f"{seconds / HOUR:.1f} h" if seconds < 10 * HOUR else f"{seconds / HOUR:.0f} h"


def estimate_seconds(spec: JobSpec, params: int) -> float:
    """The run's compute time at `DEADLINE_MFU` of the slowest board its GPU kind may land on."""
    t, res = spec.training, spec.resources
    assert t.max_steps is not None and res.gpu != "none"
    tokens = t.max_steps * t.per_device_batch_size * t.grad_accum * res.world_size * spec.data.max_seq_len
    p = spec_passes(spec)  # a preference objective's rows per batch row (sft: trained once, no forward-only pass)
    flops = dense_flops(params, tokens * p.trained, recompute=t.gradient_checkpointing)
    flops += FORWARD * params * tokens * (p.forward + p.precomputed)
    slowest = min(g.bf16_flops for g in KINDS[res.gpu])
    return flops / (res.world_size * slowest * DEADLINE_MFU)


def resolve(spec: JobSpec, params: int | None) -> Deadline:
    """The training Job's deadline: the spec's, none, or `auto`'s estimate when there is one."""
    res = spec.resources
    if res.deadline == "none":
        return Deadline(None, "deadline: none (resources.deadline: none)")
    if (stated := res.deadline_seconds) is not None:
        return Deadline(stated, f"deadline: {hours(stated)} (resources.deadline: {res.deadline})")
    if res.gpu == "none":  # no GPUs to hold, and no speed to estimate
        return Deadline(None, "")
    missing = ("training.max_steps is unset, so the run's length depends on the data" if spec.training.max_steps
               is None else "the base model's size is not known here" if params is None else None)
    if missing:
        return Deadline(None, f"deadline: none (resources.deadline auto: {missing}); a hung job holds its GPUs "
                              "until cancelled: set e.g. `--set resources.deadline=48h`")
    compute = estimate_seconds(spec, params)  # type: ignore[arg-type]
    seconds = math.ceil((DEADLINE_FACTOR * compute + DEADLINE_STARTUP_HOURS * HOUR) / HOUR) * HOUR
    slowest = min(KINDS[res.gpu], key=lambda g: g.bf16_flops)
    t, p = spec.training, spec_passes(spec)
    kind = "" if t.objective == "sft" else f" of {t.objective} ({p.flops_factor(t.gradient_checkpointing):.2f} x " \
        f"an SFT step's FLOPs{', + the reference pass before training' if p.precomputed else ''})"
    return Deadline(seconds, f"deadline: {hours(seconds)} (resources.deadline auto: {DEADLINE_FACTOR} x "
                             f"{hours(compute)} for {t.max_steps} steps{kind} at {DEADLINE_MFU:.0%} of "
                             f"{res.world_size} {slowest.label}'s bf16 peak, + {DEADLINE_STARTUP_HOURS} h to start)")
