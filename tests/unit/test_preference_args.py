"""trainer/train/preference_args.py: each preference objective's TRL config carries the spec's values, and none of
TRL's own defaults (gradient checkpointing on, bf16 on, a log every 10 steps) leaks past the spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from trl import DPOConfig, KTOConfig
from trl.experimental.orpo import ORPOConfig

from trainer.spec.job import JobSpec
from trainer.train.arguments import training_arguments


def args(tmp_path: Path, objective: str, preference: dict[str, Any] | None = None, **training: Any) -> Any:
    spec = JobSpec.model_validate({
        "name": "p", "base_model": "m", "preference": preference or {},
        "data": {"train": "t.jsonl", "format": "unpaired" if objective == "kto" else "preference", "max_seq_len": 96},
        "training": {"objective": objective, "max_steps": 7, "per_device_batch_size": 2, "logging_steps": 3,
                     **training},
        "resources": {"gpu": "none"}})
    return training_arguments(spec, tmp_path, "p", cpu=True)


@pytest.mark.parametrize(("objective", "config"), [("dpo", DPOConfig), ("orpo", ORPOConfig), ("kto", KTOConfig)])
def test_the_spec_not_trls_defaults(tmp_path: Path, objective: str, config: type) -> None:
    a = args(tmp_path, objective, {"beta": 0.25})
    assert type(a) is config
    assert a.gradient_checkpointing is False and a.bf16 is False and a.fp16 is False  # the model's own checkpointing
    assert a.logging_steps == 3 and a.max_steps == 7 and a.max_length == 96 and a.beta == 0.25
    assert a.ignore_data_skip is False  # the Trainer's own skip finds the resume position
    assert a.disable_dropout is True  # preference.dropout: off (TRL's choice, the spec's default)


def test_dpo_settings_reach_trl(tmp_path: Path) -> None:
    a = args(tmp_path, "dpo", {"loss_type": "robust", "label_smoothing": 0.1, "precompute_reference": True,
                               "dropout": "adapter"})
    assert a.loss_type == ["robust"] and a.loss_weights == [1.0] and a.label_smoothing == 0.1
    assert a.precompute_ref_log_probs is True and a.disable_dropout is False
    rpo = args(tmp_path, "dpo", {"sft_weight": 0.5})
    assert rpo.loss_type == ["sigmoid", "sft"] and rpo.loss_weights == [1.0, 0.5]


def test_kto_weights_reach_trl(tmp_path: Path) -> None:
    a = args(tmp_path, "kto", {"desirable_weight": 1.3, "undesirable_weight": 0.7})
    assert (a.desirable_weight, a.undesirable_weight) == (1.3, 0.7)
