"""The TRL config of a preference objective (`training.objective: dpo | orpo | kto`), from the job spec.

The Trainer's arguments are SFT's (trainer/train/arguments.py `argument_values`), with what a TRL config changes:
TRL's configs default to gradient checkpointing, bf16 and logging every 10 steps; every one of those is set here from
the spec instead (checkpointing is the model's, trainer/model/load.py). Data skip on resume is the Trainer's own (the
preference rows are a map-style dataset on every rank, trainer/train/preference.py).
"""

from __future__ import annotations

from typing import Any

from transformers import TrainingArguments
from trl import DPOConfig, KTOConfig
from trl.experimental.orpo import ORPOConfig

from trainer.spec.job import JobSpec


def preference_arguments(spec: JobSpec, values: dict[str, Any]) -> TrainingArguments:
    """DPOConfig, ORPOConfig or KTOConfig with `values` (the shared arguments) and the `preference` section."""
    p, objective = spec.preference, spec.training.objective
    values = {**values, "ignore_data_skip": False, "gradient_checkpointing": False,
              "max_length": spec.data.max_seq_len, "beta": p.beta, "disable_dropout": p.dropout == "off"}
    if objective == "dpo":
        sft = (["sft"], [p.sft_weight]) if p.sft_weight else ([], [])  # RPO: the chosen answers' cross-entropy
        return DPOConfig(**values, loss_type=[p.loss_type, *sft[0]], loss_weights=[1.0, *sft[1]],
                         label_smoothing=p.label_smoothing,
                         precompute_ref_log_probs=p.precompute_reference, truncation_mode="keep_start")
    if objective == "kto":
        return KTOConfig(**values, desirable_weight=p.desirable_weight, undesirable_weight=p.undesirable_weight,
                         precompute_ref_log_probs=p.precompute_reference)
    if objective == "orpo":
        return ORPOConfig(**values)
    raise ValueError(f"training.objective {objective!r} is not a preference objective")
