"""gpt-oss end to end on a tiny random gpt-oss (2 layers, 4 experts top-2, the Harmony stand-in tokenizer and
gpt-oss's real chat template): our trainer trains LoRA on attention and on both fused expert tensors
(`adapter.target_parameters`), the merge equals the adapted model, and the export job converts the dense merged
model with llama.cpp's own converter, quantizes it to q8_0 and q4_k_m, loads it in llama.cpp and passes the
verification gate. Also the pre-quantized bitsandbytes base (seed 000's option): trained as saved, merged onto
its de-quantized weights.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.models import chat_rows, copy_model
from tests.resources import llama_cpp_dir

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def write_job(folder: Path, base: Path, **model: Any) -> Path:
    rows = chat_rows(48, seed=0, arch="gpt_oss")  # plain `messages` rows, no `thinking`
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_rows(4, seed=1, arch="gpt_oss")))
    spec = {
        "name": "tiny-gpt-oss",
        "base_model": str(base),
        "model": {"dtype": "float32", **model},  # attn_implementation stays `sdpa`: the trainer runs eager
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear",
                    "target_parameters": EXPERTS},
        "data": {"train": "train.jsonl", "eval": "eval.jsonl", "max_seq_len": 256},
        "training": {"max_steps": 40, "learning_rate": 1.0e-2, "per_device_batch_size": 4, "logging_steps": 8,
                     "warmup_ratio": 0.0},
        "resources": {"gpu": "none"},
        "output": {"uri": "out"},
        "eval": {"num_samples": 1, "max_new_tokens": 4},
        # A random-weights gpt-oss: q4_k_m held to a tight KL and a loose top-1, as its seed stand-ins (tests/seeds.py)
        "export": {"gguf": ["f16", "q8_0", "q4_k_m"], "register": None,
                   "verify": {"golden_conversations": 3, "thresholds": {"q4_k_m": {"min_top1": 0.75, "max_kl": 0.05}}}},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def train(spec_path: Path) -> str:
    from trainer.train import loop as trainer

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("KUBETUNE_WORK_DIR", str(spec_path.parent / "work"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        code = trainer.main(["--spec", str(spec_path)])
    assert code == 0, printed.getvalue()[-4000:]
    return printed.getvalue()


def merged_and_adapted(spec_path: Path, out: Path) -> tuple[Any, Any, Any]:
    """(merged model, base + adapter as PEFT runs it, base) from our merge of the training output."""
    import torch
    from peft import PeftModel

    from trainer.export import merge
    from trainer.model import load as models
    from trainer.spec.io import spec_from_dict

    spec = spec_from_dict(yaml.safe_load(spec_path.read_text()))
    merged = merge.merge(spec, out / "adapter", out / "tokenizer", spec_path.parent / "merged")
    from transformers import AutoModelForCausalLM

    dense = AutoModelForCausalLM.from_pretrained(merged.path, dtype=torch.float32)
    ref = models.resolve_base_model(spec.base_model)
    base = merge.load_dense_base(spec, ref, quantized_like_training=True)
    adapted = PeftModel.from_pretrained(merge.load_dense_base(spec, ref, quantized_like_training=True),
                                        str(out / "adapter"))
    return dense, adapted, base


def assert_merge_is_exact(dense: Any, adapted: Any, base: Any, tokenizer_dir: Path) -> None:
    import torch
    from peft.tuners.lora import ParamWrapper
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    wrappers = {n: m for n, m in adapted.named_modules() if isinstance(m, ParamWrapper)}
    assert len(wrappers) == 4  # gate_up_proj and down_proj of both layers
    base_state, merged_state = base.state_dict(), dense.state_dict()
    for name, wrapper in wrappers.items():
        key = name.removeprefix("base_model.model.").replace(".base_layer", "") + "." + wrapper.parameter_name
        delta = wrapper.get_delta_weight("default")
        assert float(delta.abs().max()) > 1e-4, f"{key}: the trained expert adapter is still zero"
        torch.testing.assert_close(merged_state[key], base_state[key] + delta, rtol=1e-5, atol=1e-6)
    text = tok.apply_chat_template(chat_rows(2, seed=9, arch="gpt_oss")[0]["messages"], tokenize=False)
    ids = tok(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        want, got = adapted(ids).logits, dense(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def run_export(spec_path: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"KUBETUNE_LLAMA_CPP_DIR": str(llama_cpp_dir()), "HF_HUB_OFFLINE": "1",
                        "PYTHONPATH": str(REPO), "KUBETUNE_WORK_DIR": str(spec_path.parent / "work-export")}
    cmd = [sys.executable, "-m", "trainer.export", "--spec", str(spec_path)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=spec_path.parent, timeout=900)


def test_gpt_oss_trains_experts_merges_exactly_and_exports_a_verified_gguf(tmp_path: Path) -> None:
    base = copy_model("gpt_oss", tmp_path / "base")
    spec_path = write_job(tmp_path, base)
    log = train(spec_path)
    assert "model.attn_implementation sdpa -> eager" in log and "get no adapter" not in log
    out = tmp_path / "out"
    assert (out / "_SUCCESS").is_file()
    adapter_config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter_config["target_parameters"]) == sorted(EXPERTS)

    dense, adapted, base_model = merged_and_adapted(spec_path, out)
    assert_merge_is_exact(dense, adapted, base_model, out / "tokenizer")

    done = run_export(spec_path)
    print(done.stdout)  # the job's report: shown with `pytest -s`
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report = json.loads((out / "export" / "verify.json").read_text())
    by_quant = {f["quant"]: f for f in report["files"]}
    assert set(by_quant) == {"f16", "q8_0", "q4_k_m"} and report["passed"]
    assert all(f["passed"] for f in report["files"]), report
    assert by_quant["f16"]["top1"] >= 0.98
    names = {c["name"] for c in by_quant["q4_k_m"]["checks"]}
    assert {"tokenization", "top1", "kl", "chat_template", "stopping"} <= names


def test_prequantized_bnb_4bit_base_trains_as_saved_and_merges_dequantized(tmp_path: Path) -> None:
    """A base saved by bitsandbytes (as unsloth/gpt-oss-20b-unsloth-bnb-4bit is): not quantized again, trained
    with `model.quantization: 4bit`, merged onto its de-quantized weights; the merged folder is a plain model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

    dense_base = copy_model("gpt_oss", tmp_path / "dense")
    quantized = AutoModelForCausalLM.from_pretrained(dense_base, dtype=torch.float32, quantization_config=(
        BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                           bnb_4bit_compute_dtype=torch.float32)))
    base = tmp_path / "bnb-4bit"
    quantized.save_pretrained(base)
    AutoTokenizer.from_pretrained(dense_base).save_pretrained(base)
    shutil.rmtree(dense_base)  # nothing may fall back to the original weights
    assert json.loads((base / "config.json").read_text())["quantization_config"]["quant_method"] == "bitsandbytes"

    spec_path = write_job(tmp_path, base, quantization="4bit")
    train(spec_path)
    out = tmp_path / "out"
    dense, adapted, base_model = merged_and_adapted(spec_path, out)
    assert "quantization_config" not in json.loads((tmp_path / "merged" / "config.json").read_text())
    assert json.loads((tmp_path / "merged" / "export_info.json").read_text())["qlora_weight_delta"] is None
    assert_merge_is_exact(dense, adapted, base_model, out / "tokenizer")
