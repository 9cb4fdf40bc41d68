"""The spec's preference rules (trainer/spec/preference.py): what each objective refuses, each error naming the field
and the fix; and a resolved spec (every default written out) passing them as the spec it came from did."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from trainer.spec.io import dump_spec, spec_from_dict
from trainer.spec.job import JobSpec


def spec(objective: str = "dpo", fmt: str = "preference", **sections: dict[str, Any]) -> JobSpec:
    raw: dict[str, Any] = {"name": "p", "base_model": "m", "data": {"train": "t.jsonl", "format": fmt},
                           "training": {"objective": objective, "per_device_batch_size": 2}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return JobSpec.model_validate(raw)


@pytest.mark.parametrize(("objective", "fmt"), [("sft", "messages"), ("dpo", "preference"), ("orpo", "preference"),
                                                ("kto", "unpaired"), ("kto", "preference")])
def test_a_resolved_spec_validates_as_its_source_did(objective: str, fmt: str) -> None:
    source = spec(objective, fmt)
    assert spec_from_dict(yaml.safe_load(dump_spec(source))) == source


@pytest.mark.parametrize(("objective", "fmt", "sections", "named"), [
    ("dpo", "messages", {}, "data.format: `messages` is not preference data"),
    ("sft", "preference", {}, "data.format: `preference` rows are preference data"),
    ("orpo", "unpaired", {}, "set data.format to `preference`"),
    ("sft", "messages", {"preference": {"beta": 0.2}}, "preference: its settings are for"),
    ("kto", "unpaired", {"preference": {"loss_type": "ipo"}}, "preference.loss_type: read by"),
    ("orpo", "preference", {"preference": {"precompute_reference": True}}, "preference.precompute_reference"),
    ("dpo", "preference", {"preference": {"desirable_weight": 2.0}}, "preference.desirable_weight"),
    ("kto", "unpaired", {"preference": {"sft_weight": 1.0}}, "preference.sft_weight"),
    ("dpo", "preference", {"preference": {"loss_type": "exo_pair"}}, "needs preference.label_smoothing > 0"),
    ("dpo", "preference", {"preference": {"loss_type": "hinge", "label_smoothing": 0.1}}, "does not read it"),
    ("dpo", "preference", {"data": {"train_on": "all"}}, "data.train_on"),
    ("dpo", "preference", {"data": {"reasoning": "mask"}}, "data.reasoning"),
    ("dpo", "preference", {"training": {"loss": "full"}}, "training.loss"),
    ("kto", "unpaired", {"training": {"per_device_batch_size": 1}}, "training.per_device_batch_size"),
])
def test_what_an_objective_cannot_do_is_refused_by_name(objective: str, fmt: str, sections: dict[str, Any],
                                                        named: str) -> None:
    with pytest.raises(ValidationError) as e:
        spec(objective, fmt, **sections)
    assert named in str(e.value)


def test_preference_defaults_pass_and_packing_does_not_apply() -> None:
    s = spec("dpo", data={"packing": True})  # a resolved spec writes packing: true: not an error, said at start
    assert s.training.objective == "dpo" and s.preference.beta == 0.1
