"""`adapter.init_from` (trainer/model/init_from.py): a folder or a job's output found, the parent checked against the
spec (every difference named with its fix, exit 2), and a job that starts from it computing what the parent's own
model computes. The registry and s3:// are in tests/integration/test_init_from_stores.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from tests.models import tiny_model  # noqa: E402
from trainer.model import init_from  # noqa: E402
from trainer.model import load as M  # noqa: E402
from trainer.model.errors import ModelError  # noqa: E402
from trainer.spec.io import SpecError, spec_from_dict  # noqa: E402

LLAMA_LINEAR = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]


def make_spec(base: str | Path = "base", **adapter) -> object:
    return spec_from_dict({"name": "dpo", "base_model": str(base), "data": {"train": "unused.jsonl"},
                           "resources": {"gpu": "none"}, "model": {"dtype": "float32"}, "adapter": adapter})


def write_adapter(folder: Path, **config) -> Path:
    """An adapter folder as PEFT saves one (the weights' content does not matter for finding and checking it)."""
    folder.mkdir(parents=True, exist_ok=True)
    full = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": 16, "lora_alpha": 32, "use_dora": False,
            "use_rslora": False, "target_modules": [f"model.layers.0.self_attn.{m}" for m in LLAMA_LINEAR],
            "target_parameters": None} | config
    (folder / "adapter_config.json").write_text(json.dumps(full))
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    return folder


def job_output(folder: Path, base_model: str = "base", run_id: str = "run-sft-1", **config) -> Path:
    """What a finished job leaves in its output: adapter/, spec.yaml, _SUCCESS."""
    write_adapter(folder / "adapter", **config)
    (folder / "spec.yaml").write_text(yaml.safe_dump({"name": "sft", "base_model": base_model}))
    (folder / "_SUCCESS").write_text(json.dumps({"run_id": run_id, "job_name": "sft-abcde"}))
    return folder


def test_a_job_output_relative_to_the_spec_folder_gives_its_adapter_base_and_run(tmp_path: Path) -> None:
    job_output(tmp_path / "runs" / "sft")
    parent = init_from.resolve(make_spec(init_from="runs/sft"), base_dir=tmp_path)
    assert parent is not None and parent.folder == tmp_path / "runs" / "sft" / "adapter"
    assert (parent.base_model, parent.run_id, parent.config["r"]) == ("base", "run-sft-1", 16)
    assert parent.tags() == {"kubetune.parent": "runs/sft", "kubetune.parent.resolved": str(parent.folder),
                             "kubetune.parent.run_id": "run-sft-1"}
    again = init_from.resolve(make_spec(init_from=str(tmp_path / "runs" / "sft" / "adapter")))  # its adapter/ folder
    assert again is not None and again.folder == parent.folder and again.run_id == "run-sft-1"


def test_a_bare_adapter_folder_has_no_known_base_or_run(tmp_path: Path) -> None:
    write_adapter(tmp_path / "my-adapter")
    parent = init_from.resolve(make_spec(base="another/model", init_from="my-adapter"), base_dir=tmp_path)
    assert parent is not None and parent.base_model is None and parent.run_id is None
    assert init_from.resolve(make_spec()) is None


@pytest.mark.parametrize(("make", "says"), [
    (lambda p: None, "no adapter_config.json in"),
    (lambda p: (p / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"})), "no adapter_model.safetensors"),
    (lambda p: write_adapter(p, peft_type="IA3"), "a IA3 adapter"),
])
def test_a_folder_that_is_no_lora_adapter_is_named(tmp_path: Path, make, says: str) -> None:
    (tmp_path / "parent").mkdir()
    make(tmp_path / "parent")
    with pytest.raises(ModelError, match=says) as e:
        init_from.resolve(make_spec(init_from="parent"), base_dir=tmp_path)
    assert e.value.exit_code == 2 and "adapter.init_from parent" in str(e.value)


def test_every_lora_setting_that_differs_is_named_with_both_values_and_the_fix(tmp_path: Path) -> None:
    job_output(tmp_path / "sft", base_model="google/gemma-3-270m-it", r=8, lora_alpha=16, use_dora=True,
               use_rslora=True, target_modules=["q_proj", "v_proj"], target_parameters=["mlp.experts.down_proj"])
    spec = make_spec(base="google/gemma-3-1b-it", r=16, alpha=32, target_modules=["q_proj", "k_proj", "v_proj"],
                     init_from="sft")
    with pytest.raises(ModelError) as e:
        init_from.resolve(spec, base_dir=tmp_path)
    text = str(e.value)
    assert e.value.exit_code == 2
    for line in ("adapter.r: the parent's is 8, this spec's 16: set `adapter.r: 8`",
                 "adapter.alpha: the parent's is 16, this spec's 32: set `adapter.alpha: 16`",
                 "adapter.method: the parent's is dora, this spec's lora: set `adapter.method: dora`",
                 "adapter.rslora: the parent's is true, this spec's false: set `adapter.rslora: true`",
                 "adapter.target_parameters: the parent's is [mlp.experts.down_proj], this spec's []: "
                 "set `adapter.target_parameters: [mlp.experts.down_proj]`",
                 "adapter.target_modules: the parent's is [q_proj, v_proj], this spec's [k_proj, q_proj, v_proj]: "
                 "set `adapter.target_modules: [q_proj, v_proj]`",
                 "base_model: the parent was trained on google/gemma-3-270m-it, this spec's is google/gemma-3-1b-it: "
                 "set `base_model: google/gemma-3-270m-it`"):
        assert line in text, text


def test_equal_settings_pass_and_a_parent_without_target_parameters_asks_to_leave_them_out(tmp_path: Path) -> None:
    job_output(tmp_path / "sft", target_modules=["q_proj", "v_proj"])
    ok = make_spec(target_modules=["v_proj", "q_proj"], init_from="sft")
    assert init_from.resolve(ok, base_dir=tmp_path) is not None
    extra = make_spec(target_modules=["q_proj", "v_proj"], target_parameters=["mlp.experts.down_proj"],
                      dropout=0.0, init_from="sft")
    with pytest.raises(ModelError, match="leave out adapter.target_parameters"):
        init_from.resolve(extra, base_dir=tmp_path)


def test_a_relative_base_model_is_the_same_as_the_parents_absolute_one(tmp_path: Path) -> None:
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    job_output(tmp_path / "sft", base_model=str(tmp_path / "models" / "tiny"))  # `launch submit --local` wrote it so
    assert init_from.resolve(make_spec(base="models/tiny/", init_from="sft"), base_dir=tmp_path) is not None
    with pytest.raises(ModelError, match=f"base_model: the parent was trained on {tmp_path}/models/tiny, this spec"):
        init_from.resolve(make_spec(base="models/other", init_from="sft"), base_dir=tmp_path)


@pytest.mark.parametrize("init", ["pissa", "loftq"])
def test_init_from_with_a_computed_initialisation_is_a_spec_error(init: str) -> None:
    with pytest.raises(SpecError, match=f"init_from: .*`init: {init}` would replace: set `adapter.init: default`"):
        make_spec(init=init, init_from="runs/sft")
    with pytest.raises(SpecError, match="init_from: empty"):
        make_spec(init_from=" ")


@pytest.mark.parametrize("given", ["models:/sft", "models:/sft/latest", "models:/a/b/3", "models:/sft@"])
def test_a_models_uri_that_names_no_version_is_refused(given: str) -> None:
    with pytest.raises(ModelError, match="write `models:/NAME@ALIAS` or `models:/NAME/VERSION`"):
        init_from.parse_models_uri(given)
    assert init_from.parse_models_uri("models:/sft@champion") == ("sft", "champion", None)
    assert init_from.parse_models_uri("models:/sft/12") == ("sft", None, "12")


def test_models_uri_without_a_registry_says_where_to_set_one(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="no MLflow registry to look in: set tracking.mlflow_uri"):
        init_from.resolve(make_spec(init_from="models:/sft@candidate"), base_dir=tmp_path)


# -- the weights: a job that starts from the parent computes what the parent's model does -----------------------
def trained_parent(out: Path, base: Path, **lora) -> Path:
    """A parent job's output whose adapter is far from a fresh one (random B, so it changes the logits)."""
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name or "lora_magnitude" in name:
                p.add_(torch.randn_like(p) * 0.05)
    peft.save_pretrained(out / "adapter")
    (out / "spec.yaml").write_text(yaml.safe_dump({"name": "sft", "base_model": str(base)}))
    return out


@pytest.mark.parametrize(("lora", "adapter"), [
    ({"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "use_rslora": True},
     {"r": 4, "alpha": 8, "rslora": True}),
    ({"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"], "use_dora": True},
     {"r": 2, "alpha": 4, "method": "dora", "target_modules": ["q_proj", "v_proj"]}),
], ids=["lora-all-linear-rslora", "dora-named"])
def test_the_adapter_starts_as_the_parent_left_it(tmp_path: Path, lora: dict, adapter: dict) -> None:
    base = tiny_model("llama")
    trained_parent(tmp_path / "runs" / "sft", base, **lora)
    spec = make_spec(base, **adapter, init_from="runs/sft")
    parent = init_from.resolve(spec, base_dir=tmp_path)
    ref = M.resolve_base_model(spec.base_model)
    started = M.add_adapter(M.load_base_model(ref, spec), spec, ref, parent)
    lora_params = {n: p for n, p in started.named_parameters() if "lora_" in n}
    assert lora_params and all(p.requires_grad for p in lora_params.values())  # it trains on from there
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                                          str(tmp_path / "runs" / "sft" / "adapter"))
    plain = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    ids = torch.randint(0, plain.config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, want, base_logits = (m.eval()(ids).logits for m in (started, reference, plain))
    assert torch.equal(got, want)
    assert (got - base_logits).abs().max() > 1e-3  # the parent's adapter is really in it


def test_a_parent_of_other_modules_is_refused_when_the_adapter_is_built(tmp_path: Path) -> None:
    base = tiny_model("llama")
    trained_parent(tmp_path / "sft", base, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    spec = make_spec(base, r=4, alpha=8, init_from="sft")  # all-linear: compared once the model is built
    parent = init_from.resolve(spec, base_dir=tmp_path)
    ref = M.resolve_base_model(spec.base_model)
    with pytest.raises(ModelError) as e:
        M.add_adapter(M.load_base_model(ref, spec), spec, ref, parent)
    assert e.value.exit_code == 2
    assert f"the parent adapts [q_proj, v_proj], this adapter [{', '.join(LLAMA_LINEAR)}]" in str(e.value)
    assert "set `adapter.target_modules: [q_proj, v_proj]`" in str(e.value)
