"""The `export` section: GGUF types checked against the one table, gate thresholds with defaults."""

from __future__ import annotations

import pytest

from trainer.spec.io import SpecError, spec_from_dict
from trainer.spec.quants import QUANTS

BASE = {"name": "job", "base_model": "org/model", "data": {"train": "train.jsonl"}}


def spec(export):
    return spec_from_dict(BASE | {"export": export})


def test_no_export_section_means_no_export_and_empty_section_means_defaults():
    assert spec_from_dict(BASE).export is None
    export = spec({}).export
    assert export.gguf == ["q4_k_m"]
    assert export.register.alias == "candidate" and export.register.register_merged is False
    assert export.ollama is True


def test_unknown_gguf_types_are_rejected_naming_the_known_ones():
    with pytest.raises(SpecError) as e:
        spec({"gguf": ["q4_k_m", "q4_k_x"], "verify": {"thresholds": {"q7": {"min_top1": 0.9, "max_kl": 0.1}}}})
    problems = "\n".join(e.value.problems)
    assert "export.gguf: unknown GGUF type(s) q4_k_x; known: f32, f16" in problems
    assert "export.verify.thresholds: unknown GGUF type(s) q7" in problems


def test_duplicate_types_and_bad_thresholds_are_rejected():
    with pytest.raises(SpecError, match="twice"):
        spec({"gguf": ["q8_0", "q8_0"]})
    with pytest.raises(SpecError, match="min_top1"):
        spec({"verify": {"thresholds": {"q8_0": {"min_top1": 1.5, "max_kl": 0.1}}}})


def test_gate_thresholds_default_per_type_and_can_be_overridden():
    verify = spec({"gguf": ["q8_0", "q4_k_m"], "verify": {"thresholds": {"q4_k_m": {"min_top1": 0.9, "max_kl": 0.1}}}}).export.verify
    assert (verify.gate("q8_0").min_top1, verify.gate("q8_0").max_kl) == (QUANTS["q8_0"].min_top1, QUANTS["q8_0"].max_kl)
    assert (verify.gate("q4_k_m").min_top1, verify.gate("q4_k_m").max_kl) == (0.9, 0.1)


def test_coarser_types_never_get_stricter_default_gates():
    order = ["f32", "f16", "q8_0", "q6_k", "q5_k_m", "q4_k_m", "q4_0", "q3_k_m", "q2_k"]
    tops = [QUANTS[q].min_top1 for q in order]
    kls = [QUANTS[q].max_kl for q in order]
    assert tops == sorted(tops, reverse=True) and kls == sorted(kls)


def test_dotted_override_and_lmstudio_publisher_check():
    s = spec_from_dict(BASE | {"export": {}}, overrides=["export.gguf=[q8_0, f16]", "export.register.alias=prod"])
    assert s.export.gguf == ["q8_0", "f16"] and s.export.register.alias == "prod"
    with pytest.raises(SpecError, match="not a folder name"):
        spec({"lmstudio_publisher": "a/b"})
