"""`launch plan` and the fit check of `launch submit`, run as a user runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from launcher import client
from launcher.cli import main
from launcher.plan.fit import GPUS

REMOTE = {"data": {"train": "s3://datasets/train.jsonl"}, "output": {"uri": "s3://runs/plan/"}}
SEEDS = {  # the seeds' models, set up as their authors describe
    "gpt-oss-20b": {"base_model": "openai/gpt-oss-20b", "model": {"attn_implementation": "eager"},
                    "data": {"max_seq_len": 2048}, "training": {"per_device_batch_size": 1,
                                                                "gradient_checkpointing": True},
                    "resources": {"gpu": "h100", "gpus_per_node": 1}},
    "r1-distill-qwen-7b": {"base_model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B", "model": {"quantization": "4bit"},
                           "adapter": {"r": 32, "alpha": 64}, "resources": {"gpu": "a100", "gpus_per_node": 2}},
    "gemma-3-12b": {"base_model": "google/gemma-3-12b-it", "model": {"quantization": "4bit"},
                    "adapter": {"method": "dora", "r": 64, "alpha": 64, "rslora": True},
                    "data": {"max_seq_len": 4096}, "training": {"per_device_batch_size": 1,
                                                                "gradient_checkpointing": True},
                    "resources": {"gpu": "any", "gpus_per_node": 4, "nodes": 2}},
}
# the logits at every position, as transformers computes them (`training.loss: full`): every rung is needed
TOO_BIG = {"base_model": "google/gemma-3-12b-it", "adapter": {"method": "dora", "r": 64, "alpha": 128},
           "data": {"max_seq_len": 4096},
           "training": {"per_device_batch_size": 2, "gradient_checkpointing": True, "loss": "full"},
           "resources": {"gpu": "a100", "gpus_per_node": 1}}


def spec_file(folder: Path, name: str, sections: dict[str, Any]) -> Path:
    raw: dict[str, Any] = {"name": name, **REMOTE}
    for key, value in sections.items():
        raw[key] = raw.get(key, {}) | value if isinstance(value, dict) else value
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def launch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "KUBETUNE_DEBUG"} | (env or {})
    return subprocess.run([sys.executable, "-m", "launcher.cli", *args], capture_output=True, text=True, env=full,
                          timeout=120)


@pytest.mark.parametrize("seed", SEEDS)
def test_plan_prints_a_fit_per_gpu_type_and_count_for_each_seed(tmp_path: Path, seed: str) -> None:
    done = launch("plan", str(spec_file(tmp_path, seed, SEEDS[seed])))
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "fit per GPU type and count:" in out
    header = next(line for line in out.splitlines() if "per GPU" in line and "H100 80GB" in line)
    assert all(g.label in header for g in GPUS)  # the whole catalog: H200, B200, L40S, A10G too
    rows = re.findall(r"^\s+(\d+)( \*)?\s+[\d.]+ GiB\s+(fits|OOM) [+-]", out, re.M)
    world = {"gpt-oss-20b": 1, "r1-distill-qwen-7b": 2, "gemma-3-12b": 8}[seed]
    assert [int(n) for n, _, _ in rows] == [1, 2, 4, 8]
    assert [int(n) for n, star, _ in rows if star] == [world]  # the spec's own nodes x gpus_per_node
    assert all(len(re.findall(r"(fits|OOM) [+-]", line)) == len(GPUS) for line in out.splitlines()
               if re.match(r"^\s+\d+( \*)?\s+[\d.]+ GiB", line))
    assert re.search(r"^(fits|does not fit): ", out, re.M)
    assert "base weights" in out and "activations" in out and "logits + loss" in out


def test_submit_refuses_a_job_that_cannot_fit_with_the_ladder(tmp_path: Path) -> None:
    done = launch("submit", str(spec_file(tmp_path, "too-big", TOO_BIG)))
    assert done.returncode == 2
    err = done.stderr
    assert "Traceback" not in err + done.stdout
    assert "does not fit: " in err and "A100 40GB has 40.0 GiB" in err
    labels = re.findall(r"- \d\. ([a-zA-Z0-9 ()-]+): --set", err)
    # no ZeRO-3 rung after QLoRA: that combination is refused (not proven, trainer/spec/strategy.py)
    assert labels == ["shorter sequences", "lower rank", "no DoRA", "fewer target modules", "QLoRA (4bit)",
                      "more GPUs"]
    assert "--set data.max_seq_len=2048 -> " in err and "auto-fit stops here" in err
    assert "--set training.per_device_batch_size=1 --set training.grad_accum=2" in err  # a lever outside the ladder


def test_submit_dry_run_warns_instead(tmp_path: Path, helm_binary: str) -> None:
    done = launch("submit", "--dry-run", str(spec_file(tmp_path, "too-big", TOO_BIG)))
    assert done.returncode == 0, done.stderr
    assert "kind: Job" in done.stdout
    assert "memory: does not fit" in done.stderr and "to fit: 1. shorter sequences" in done.stderr


def test_auto_fit_applies_the_first_rungs_that_fit_and_says_so(tmp_path: Path, helm_binary: str) -> None:
    path = spec_file(tmp_path, "too-big", TOO_BIG)
    sub = client.prepare(path, auto_fit=True)
    s = sub.spec  # the ladder's first five rungs; QLoRA is the first at which it fits an A100 40GB
    assert (s.data.max_seq_len, s.adapter.r, s.adapter.alpha, s.adapter.method, s.model.quantization) == (
        2048, 32, 64, "lora", "4bit")
    assert s.adapter.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert s.training.strategy == "ddp" and s.resources.world_size == 1  # nothing past the rung that fits
    assert sub.notes[0].startswith("auto-fit: does not fit") and "--set model.quantization=4bit" in sub.notes[0]
    assert sub.notes[1].startswith("memory: fits")
    result = CliRunner().invoke(main, ["submit", "--dry-run", "--auto-fit", str(path)])
    assert result.exit_code == 0, result.output
    assert "max_seq_len: 2048" in result.output and "auto-fit: does not fit" in result.output


def test_plan_auto_fit_prints_without_submitting(tmp_path: Path) -> None:
    done = launch("plan", "--auto-fit", "-o", "json", str(spec_file(tmp_path, "too-big", TOO_BIG)))
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["fits"] is False and data["deciding_gpu"]["type"] == "a100-40gb"
    assert [r["rung"] for r in data["ladder"]][:2] == ["shorter sequences", "lower rank"]
    assert data["auto_fit"][-1] == "model.quantization=4bit"
    assert data["total_bytes"] == sum(data["breakdown_bytes"].values())
    table = launch("plan", "--auto-fit", str(spec_file(tmp_path, "too-big", TOO_BIG)))
    assert "auto-fit: shorter sequences, lower rank, no DoRA, fewer target modules, QLoRA (4bit)" in table.stdout


def test_an_unknown_hub_id_says_how_to_plan_it(tmp_path: Path) -> None:
    path = spec_file(tmp_path, "unknown", {"base_model": "someone/unheard-of-7b"})
    done = launch("plan", str(path), env={"HF_HUB_CACHE": str(tmp_path / "empty-cache")})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "base_model: someone/unheard-of-7b is not in the plan's catalogue" in done.stderr
    assert "--model-config" in done.stderr and "openai/gpt-oss-20b" in done.stderr
    # submit does not guess: the job goes ahead, and says its memory was not checked
    sub = client.prepare(path)
    assert sub.notes and sub.notes[0].startswith("fit not checked: base_model: someone/unheard-of-7b")


def test_model_config_and_the_hugging_face_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
              "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True}
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    path = spec_file(tmp_path, "mine", {"base_model": "someone/my-qwen"})
    done = launch("plan", str(path), "--model-config", str(folder), "-o", "json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["parameters"] == 494_032_768  # Qwen2.5-0.5B's count
    snapshot = tmp_path / "hub" / "models--someone--my-qwen" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps(config))
    cached = launch("plan", str(path), "-o", "json", env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert cached.returncode == 0, cached.stderr
    assert json.loads(cached.stdout)["architecture_source"] == str(snapshot / "config.json")
    (folder / "config.json").write_text("{not json")
    bad = launch("plan", str(path), "--model-config", str(folder))
    assert bad.returncode == 2 and f"{folder / 'config.json'}: not valid JSON" in bad.stderr


def test_cpu_jobs_are_not_checked_against_gpus(tmp_path: Path) -> None:
    path = spec_file(tmp_path, "cpu", {"base_model": "google/gemma-3-270m", "resources": {"gpu": "none"}})
    assert client.prepare(path).notes == []
    sub = client.prepare(path, auto_fit=True)
    assert sub.notes == ["--auto-fit: nothing to fit; only cluster GPU jobs are checked against GPU memory"]
    done = launch("plan", str(path))
    assert done.returncode == 0 and "CPU job: about" in done.stdout and "fit per GPU" not in done.stdout
