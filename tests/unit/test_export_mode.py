"""`export.mode` validation and the shared base store (trainer/export/shared_base.py) on local folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from trainer.export import shared_base
from trainer.spec.export import ExportSpec


@pytest.mark.parametrize(("fields", "named"), [
    ({"mode": "adapters", "adapter_gguf": True}, "adapter_gguf"),
    ({"mode": "both", "adapter_gguf": True}, "adapter_gguf"),
    ({"mode": "adapters", "imatrix": {}}, "imatrix"),
    ({"mode": "adapters", "register": {"register_merged": True}}, "register_merged"),
])
def test_adapter_mode_refuses_what_it_would_ignore(fields, named):
    with pytest.raises(ValidationError, match=named):
        ExportSpec(**fields)


def test_merged_is_the_default_and_both_keeps_the_importance_matrix():
    assert ExportSpec().mode == "merged"
    assert ExportSpec(mode="both", imatrix={}).imatrix is not None
    assert ExportSpec(adapter_gguf=True).adapter_gguf


def test_adapter_mode_asks_for_one_copy_of_the_base_or_the_largest_gguf():
    params = 20_900_000_000  # gpt-oss-20b (docs/export.md), in bfloat16: 2 bytes a parameter
    gib = 2**30

    def memory(**fields) -> float:
        return int(ExportSpec(gguf=["q4_k_m", "q8_0"], **fields).requests(params, "bfloat16")["memory"][:-2])

    assert memory() == pytest.approx((2 * 2 * params + 8 * gib) / gib, abs=1)  # the merge: two copies
    assert memory(mode="both") == memory()
    assert memory(mode="adapters") == pytest.approx((2 * params + 8 * gib) / gib, abs=1)  # the base once
    f32 = int(ExportSpec(mode="adapters", gguf=["f32"]).requests(params, "bfloat16")["memory"][:-2])
    assert f32 == pytest.approx((4 * params + 8 * gib) / gib, abs=1)  # an f32 GGUF outweighs the bf16 base


def test_store_defaults_beside_the_output_folder(tmp_path):
    assert shared_base.store_uri(None, "s3://runs/gov-a/", tmp_path) == "s3://runs/bases"
    assert shared_base.store_uri(None, str(tmp_path / "runs" / "gov-a"), tmp_path) == str(tmp_path / "runs" / "bases")
    assert shared_base.store_uri("store", "s3://runs/x", tmp_path) == str(tmp_path / "store")


def test_key_changes_with_each_input():
    key = shared_base.BaseKey("sha256:ab", "bfloat16", "none", "tok", "0.3.36")
    others = [shared_base.BaseKey("sha256:ac", "bfloat16", "none", "tok", "0.3.36"),
              shared_base.BaseKey("sha256:ab", "float32", "none", "tok", "0.3.36"),
              shared_base.BaseKey("sha256:ab", "bfloat16", "4bit", "tok", "0.3.36"),
              shared_base.BaseKey("sha256:ab", "bfloat16", "none", "tok2", "0.3.36"),
              shared_base.BaseKey("sha256:ab", "bfloat16", "none", "tok", "0.3.37")]
    assert len({key.key("q8_0"), key.key("f16"), *(o.key("q8_0") for o in others)}) == 7
    assert key.family() != others[0].family()


def _maker(tmp: Path, calls: list[str], text: str):
    def make() -> Path:
        calls.append(text)
        f = tmp / f"made-{len(calls)}" / "base-q8_0.gguf"
        f.parent.mkdir(parents=True)
        f.write_text(text)
        return f
    return make


def test_written_once_then_reused(tmp_path):
    store, calls = str(tmp_path / "bases"), []
    first = shared_base.ensure(store, "k1", "q8_0", {"a": 1}, _maker(tmp_path, calls, "one"), tmp_path / "cache")
    again = shared_base.ensure(store, "k1", "q8_0", {"a": 1}, _maker(tmp_path, calls, "two"), tmp_path / "cache")
    assert calls == ["one"] and not first.reused and again.reused
    assert again.local == first.local and again.local.read_text() == "one"
    marker = json.loads((tmp_path / "bases" / "k1" / "_SUCCESS").read_text())
    assert marker["sha256"] == first.sha256 and marker["inputs"] == {"a": 1}


def test_a_writer_that_loses_the_race_uses_the_winners_file(tmp_path):
    store, calls = str(tmp_path / "bases"), []

    def racing() -> Path:  # another export finishes while this one converts
        shared_base.ensure(store, "k1", "q8_0", {}, _maker(tmp_path, calls, "winner"), tmp_path / "cache")
        return _maker(tmp_path, calls, "loser")()

    got = shared_base.ensure(store, "k1", "q8_0", {}, racing, tmp_path / "cache")
    assert got.reused and got.local.read_text() == "winner"
    writers = [d for d in (tmp_path / "bases" / "k1").iterdir() if d.is_dir()]
    assert len(writers) == 1  # the loser's upload is removed: no marker names it


@pytest.mark.parametrize("adapter", [{"method": "dora"}, {"dropout": 0.0, "target_parameters": ["mlp.experts.w1"]}])
@pytest.mark.parametrize("export", [{"mode": "adapters"}, {"mode": "both"}, {"adapter_gguf": True}])
def test_a_lora_gguf_of_an_adapter_llama_cpp_cannot_carry_is_refused(adapter, export):
    """llama.cpp has no DoRA magnitudes, and kubetune writes expert LoRA tensors for gpt-oss's experts only: such a
    file would apply another adapter than the one trained. rsLoRA and gpt-oss's experts are carried
    (tests/integration/test_adapter_gguf_rslora.py, test_adapter_gguf_gptoss.py)."""
    from trainer.spec.job import JobSpec

    job = {"name": "x", "base_model": "m", "data": {"train": "t.jsonl"}}
    with pytest.raises(ValidationError, match="dora|mlp.experts.w1"):
        JobSpec.model_validate(job | {"adapter": adapter, "export": export})
    JobSpec.model_validate(job | {"adapter": adapter, "export": {}})  # merged: PEFT merges it, whatever its kind
    carried = {"rslora": True, "dropout": 0.0,
               "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]}
    assert JobSpec.model_validate(job | {"adapter": carried, "export": export}).adapter.rslora
