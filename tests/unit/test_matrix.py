"""Matrix specs: one job per combination of values, every problem named with its job."""

from __future__ import annotations

from typing import Any

import pytest

from trainer.spec.io import SpecError, dump_spec, spec_from_dict, specs_from_dict
from trainer.spec.matrix import group


def raw(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "persona-${matrix.dimension}",
        "base_model": "Qwen/Qwen2.5-7B-Instruct",
        "data": {"train": "s3://datasets/persona/${matrix.dimension}/train.jsonl"},
        "matrix": {"dimension": ["empathy", "humor", "directness"]},
    }
    base.update(extra)
    return base


def problems(data: dict[str, Any], *overrides: str) -> list[str]:
    with pytest.raises(SpecError) as e:
        specs_from_dict(data, "job.yaml", overrides)
    return e.value.problems


def test_one_job_per_value_with_its_own_name_data_and_values() -> None:
    specs = specs_from_dict(raw())
    assert [s.name for s in specs] == ["persona-empathy", "persona-humor", "persona-directness"]
    assert specs[1].data.train == "s3://datasets/persona/humor/train.jsonl"
    assert specs[1].matrix == {"dimension": "humor"}


def test_product_of_keys() -> None:
    data = raw(name="p-${matrix.dimension}-r${matrix.rank}", matrix={"dimension": ["a", "b"], "rank": [8, 16]},
               adapter={"r": 8})
    specs = specs_from_dict(data)
    assert [s.name for s in specs] == ["p-a-r8", "p-a-r16", "p-b-r8", "p-b-r16"]


def test_the_resolved_spec_of_a_job_loads_back_as_that_job() -> None:
    """The pods re-read the resolved spec: it must give exactly that one job."""
    import yaml

    job = specs_from_dict(raw())[2]
    again = spec_from_dict(yaml.safe_load(dump_spec(job)))
    assert again == job


def test_picking_one_job_with_set() -> None:
    (spec,) = specs_from_dict(raw(), overrides=["matrix.dimension=humor"])
    assert spec.name == "persona-humor"
    with pytest.raises(SpecError, match=r"this spec is 3 jobs .*--set matrix.dimension="):
        spec_from_dict(raw())


def test_every_job_needs_its_own_name_output_and_registered_model() -> None:
    found = problems(raw(name="persona", output={"uri": "s3://runs/persona"}, export={"register": {"name": "p"}}))
    assert any(p.startswith("name: must contain ${matrix.dimension}") for p in found)
    assert any(p.startswith("output.uri: must contain ${matrix.dimension}") for p in found)
    assert any(p.startswith("export.register.name: must contain ${matrix.dimension}") for p in found)


def test_unknown_placeholders_and_bad_values() -> None:
    found = problems(raw(data={"train": "s3://d/${matrix.dimensions}/t.jsonl"}))
    assert found == ["data.train: ${matrix.dimensions} is not a matrix key (keys: dimension)"]
    found = problems(raw(matrix={"dimension": ["Empathy", "a b", True, []]}))
    assert len(found) == 4 and all(p.startswith("matrix.dimension:") for p in found)
    assert problems(raw(matrix={"dimension": []})) == ["matrix.dimension: has no values; give at least one, e.g. [a, b]"]
    assert problems(raw(matrix={"dimension": ["a", "a"]})) == ["matrix.dimension: lists a value twice"]
    no_matrix = raw()
    del no_matrix["matrix"]
    assert problems(no_matrix)[0] == "name: uses ${matrix.dimension} but the spec has no `matrix` section"


def test_a_mistake_outside_the_matrix_is_reported_once_and_a_per_job_one_names_its_job() -> None:
    found = problems(raw(training={"learning_rte": 1e-4}))
    assert len(found) == 1 and found[0].startswith("training.learning_rte: unknown field")
    long = problems(raw(matrix={"dimension": ["a", "a-value-that-makes-the-job-name-too-long"]}))
    assert len(long) == 1 and long[0].startswith("[matrix dimension=a-value-that-makes-the-job-name-too-long] name:")


def test_group_label() -> None:
    assert group("persona-${matrix.dimension}") == "persona"
    assert group("p-${matrix.a}-r${matrix.b}") == "p-r"
    assert group("${matrix.a}") == "matrix"
