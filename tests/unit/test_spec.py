"""The job spec: every example parses, every problem is reported at once, docs are current."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from trainer.spec import doc as spec_doc
from trainer.spec.io import (
    SpecError,
    apply_overrides,
    dump_spec,
    flatten,
    load_spec,
    load_specs,
    spec_from_dict,
    spec_hash,
)
from trainer.spec.job import JobSpec

ROOT = Path(__file__).resolve().parents[2]
# job specs; `*-values.yaml` files are chart values (tests/unit/test_seeds_real.py renders the chart with them)
EXAMPLES = sorted(p for p in (ROOT / "examples").glob("*.yaml") if not p.name.endswith("-values.yaml"))
MINIMAL = {"name": "demo", "base_model": "org/model", "data": {"train": "train.jsonl"}}


def test_there_are_examples() -> None:
    assert any(p.name == "quickstart.yaml" for p in EXAMPLES)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_parses(path: Path) -> None:
    specs = load_specs(path)  # a matrix example is several jobs
    for spec in specs:
        assert spec.name
        # the resolved spec round-trips: what the pods receive parses to the same spec
        assert JobSpec.model_validate(yaml.safe_load(dump_spec(spec))) == spec


def test_defaults_live_in_the_spec() -> None:
    spec = spec_from_dict(MINIMAL)
    assert spec.data.format == "messages"
    assert spec.data.bad_rows.policy == "skip"
    assert spec.adapter.target_modules == "all-linear"
    assert spec.experiment == "demo"
    assert spec.resources.world_size == 8  # one node of 8 h100s


def test_three_mistakes_are_all_reported() -> None:
    raw = {**MINIMAL, "adapter": {"r": 0}, "training": {"strategy": "zero4"},
           "data": {"train": "x.jsonl", "fromat": "messages"}}
    with pytest.raises(SpecError) as err:
        spec_from_dict(raw, "bad.yaml")
    problems = err.value.problems
    assert len(problems) == 3, problems
    text = err.value.render()
    assert "adapter.r:" in text and "greater than or equal to 1" in text
    assert "training.strategy:" in text and "'zero2'" in text  # says what would be valid
    assert "data.fromat: unknown field; did you mean `format`?" in text


def test_name_must_be_dns_label() -> None:
    with pytest.raises(SpecError, match="name: 'My_Job' is not a valid job name"):
        spec_from_dict({**MINIMAL, "name": "My_Job"})


def test_template_format_needs_template() -> None:
    with pytest.raises(SpecError, match=r"data: .*needs `data.template`"):
        spec_from_dict({**MINIMAL, "data": {"train": "t.jsonl", "format": "template"}})
    spec = spec_from_dict({**MINIMAL, "data": {"train": "t.jsonl", "format": "template",
                                               "template": {"user": "{q}", "assistant": "<think>{t}</think>{a}"}}})
    assert spec.data.template is not None and spec.data.template.assistant.startswith("<think>")
    with pytest.raises(SpecError) as err:
        spec_from_dict({**MINIMAL, "data": {"train": "t.jsonl", "format": "template",
                                            "template": {"user": "{q", "assistant": "{}"}}})
    text = err.value.render()
    assert "data.template.user: expected '}' before end of string in '{q'" in text
    assert "data.template.assistant: placeholder {} in '{}' must name a column" in text
    with pytest.raises(SpecError, match=r"`data.system_prompt` is not used with `format: template`"):
        spec_from_dict({**MINIMAL, "data": {"train": "t.jsonl", "format": "template", "system_prompt": "hi",
                                            "template": {"user": "{q}", "assistant": "{a}"}}})


def test_overrides_apply_with_yaml_types() -> None:
    spec = spec_from_dict(MINIMAL, overrides=["training.learning_rate=1e-4", "resources.gpu=none",
                                              "adapter.target_modules=[q_proj, v_proj]", "data.packing=false"])
    assert spec.training.learning_rate == pytest.approx(1e-4)
    assert spec.resources.world_size == 1
    assert spec.adapter.target_modules == ["q_proj", "v_proj"]
    assert spec.data.packing is False


def test_bad_overrides_are_reported_with_validation_problems() -> None:
    with pytest.raises(SpecError) as err:
        spec_from_dict(MINIMAL, overrides=["training.lr", "name.x=1", "training.learnig_rate=0.1"])
    text = err.value.render()
    assert "--set 'training.lr': expected KEY=VALUE" in text
    assert "--set name.x: name is str, not a section" in text
    assert "training.learnig_rate: unknown field; did you mean `learning_rate`?" in text


def test_overrides_do_not_touch_the_input() -> None:
    raw = {"a": {"b": 1}}
    new, problems = apply_overrides(raw, ["a.b=2", "c.d=3"])
    assert raw == {"a": {"b": 1}} and new == {"a": {"b": 2}, "c": {"d": 3}} and not problems


def test_file_errors_are_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="file not found"):
        load_spec(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="line 2, column 1: not valid YAML"):
        load_spec(bad)
    (tmp_path / "empty.yaml").write_text("")
    with pytest.raises(SpecError, match="the file is empty"):
        load_spec(tmp_path / "empty.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(SpecError, match="must be a YAML mapping"):
        load_spec(tmp_path / "list.yaml")


def test_hash_and_flatten_are_stable() -> None:
    a, b = spec_from_dict(MINIMAL), spec_from_dict(dict(MINIMAL))
    assert spec_hash(a) == spec_hash(b)
    assert spec_hash(a) != spec_hash(spec_from_dict(MINIMAL, overrides=["training.seed=1"]))
    flat = flatten(a)
    assert flat["training.learning_rate"] == "0.0002" and flat["adapter.target_modules"] == "all-linear"


def test_spec_docs_are_current() -> None:
    doc = ROOT / "docs" / "spec.md"
    assert doc.read_text() == spec_doc.render(), "docs/spec.md is stale: run `make docs`"
    assert spec_doc.main(["--check", str(doc)]) == 0


def test_every_field_is_described() -> None:
    def walk(model: type, path: str) -> list[str]:
        missing = []
        for name, field in model.model_fields.items():
            if not field.description:
                missing.append(f"{path}{name}")
            for cand in (field.annotation, *getattr(field.annotation, "__args__", ())):
                if isinstance(cand, type) and hasattr(cand, "model_fields"):
                    missing += walk(cand, f"{path}{name}.")
        return missing

    assert walk(JobSpec, "") == []
