"""DPO, ORPO and KTO through the real job (trainer/train/preference.py, TRL's trainers) on tiny Llama, Qwen2, Gemma 3
and gpt-oss models (the experts' LoRA included) with their real tokenizers and chat templates: preference rows in, an
adapter + MLflow metrics out.

Each objective must learn the preference of the data (the chosen answers are in a fixed format, the rejected ones
sloppy): the loss falls, and the reward margin (DPO, ORPO) or the chosen-minus-rejected reward (KTO) rises, as MLflow
recorded them; the saved adapter holds the trained weights only (not TRL's frozen reference copy).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mlflow import MlflowClient  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from tests.models import COUNTRIES, tiny_model  # noqa: E402
from trainer.model.arch import EXPERT_PARAMETERS  # noqa: E402
from trainer.train import loop  # noqa: E402

pytestmark = pytest.mark.slow
STEPS = 8


def preference_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Capital questions: chosen in a fixed `ANSWER:` format, rejected sloppy (three kinds)."""
    rng = random.Random(seed)
    sloppy = ["i think its {c} maybe", "{c}??", "The answer might be {c}, not sure."]
    rows = []
    for i in range(n):
        country, capital = rng.choice(COUNTRIES)
        rows.append({"prompt": [{"role": "user", "content": f"What is the capital of {country}?"}],
                     "chosen": [{"role": "assistant", "content": f"ANSWER: {capital}"}],
                     "rejected": [{"role": "assistant", "content": sloppy[i % 3].format(c=capital.lower())}]})
    return rows


def write_job(folder: Path, objective: str, arch: str, model: dict[str, Any] | None = None, **training: Any) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in preference_rows(24, 0)))
    adapter: dict[str, Any] = {"r": 8, "alpha": 16, "dropout": 0.0}
    if arch == "gpt_oss":  # the MoE experts too, as seeds 000 and 001 train them
        adapter["target_parameters"] = list(EXPERT_PARAMETERS["gpt_oss"])
    spec = {
        "name": f"pref-{objective}", "base_model": str(tiny_model(arch)), "model": {"dtype": "float32", **(model or {})},
        "adapter": adapter,  # Harmony's system message alone is 75 tokens
        "data": {"train": "train.jsonl", "format": "preference", "max_seq_len": 128 if arch == "gpt_oss" else 64},
        "training": {"objective": objective, "max_steps": STEPS, "learning_rate": 5.0e-3, "per_device_batch_size": 2,
                     "logging_steps": 1, "warmup_ratio": 0.0, "lr_scheduler": "constant", **training},
        "resources": {"gpu": "none"}, "output": {"uri": "out"}, "eval": {"num_samples": 0},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def run(spec: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("KUBETUNE_WORK_DIR", str(spec.parent / "work"))
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = loop.main(["--spec", str(spec)])
    assert code == 0, printed.getvalue()[-4000:]
    return printed.getvalue()


def history(out: Path, key: str) -> list[float]:
    marker = json.loads((out / "_SUCCESS").read_text())
    client = MlflowClient(marker["tracking_uri"])
    return [m.value for m in sorted(client.get_metric_history(marker["run_id"], key), key=lambda m: m.step)]


def early_late(values: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last three logged values (single steps are noisy at batch 2)."""
    assert len(values) == STEPS, values
    return sum(values[:3]) / 3, sum(values[-3:]) / 3


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt_oss"])
@pytest.mark.parametrize("objective", ["dpo", "orpo", "kto"])
def test_each_objective_learns_the_preference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, objective: str,
                                              arch: str) -> None:
    spec = write_job(tmp_path, objective, arch)
    printed = run(spec, monkeypatch)
    out = tmp_path / "out"
    first, last = early_late(history(out, "loss"))
    assert last < first, (objective, arch, history(out, "loss"))
    if objective == "kto":  # unpaired: the chosen and rejected rewards are separate means
        chosen, rejected = history(out, "rewards/chosen"), history(out, "rewards/rejected")
        margins = [c - r for c, r in zip(chosen, rejected, strict=True)]
    else:
        margins = history(out, "rewards/margins")
    early, late = early_late(margins)
    assert late > early and late > 0, (objective, arch, margins)
    assert f"trained {STEPS} steps of {objective}" in printed
    mfu = history(out, "mfu")  # every log step: the rows each step runs (trl_adapter `step_rows`)
    assert len(mfu) == STEPS and all(0 < m < 1 for m in mfu), mfu
    assert f"trained tokens/s, MFU {history(out, 'train_mfu')[0]:.1%}" in printed
    adapter = out / "adapter"
    assert not (adapter / "ref").exists()  # TRL's reference copy is rebuilt at every start, never saved
    weights = load_file(adapter / "adapter_model.safetensors")
    assert weights and all(".ref." not in k for k in weights)
    assert any(float(w.abs().sum()) > 0 for k, w in weights.items() if "lora_B" in k)  # trained: B left zero
    if arch == "gpt_oss":  # the experts' LoRA trained too
        assert any(float(w.abs().sum()) > 0 for k, w in weights.items() if ".experts." in k and "lora_B" in k), \
            sorted(weights)


def test_dpo_on_a_4bit_base_trains_a_float32_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """QLoRA (bitsandbytes 4-bit base, its CPU kernels): the preference is learned, and the adapter trains and is
    saved in float32 as an SFT QLoRA adapter is (TRL alone would cast it to bfloat16)."""
    spec = write_job(tmp_path, "dpo", "llama", model={"quantization": "4bit"})
    run(spec, monkeypatch)
    out = tmp_path / "out"
    first, last = early_late(history(out, "loss"))
    assert last < first, history(out, "loss")
    assert early_late(history(out, "rewards/margins"))[1] > 0
    weights = load_file(out / "adapter" / "adapter_model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}


@pytest.mark.parametrize("objective", ["kto"])  # DPO's: tests/e2e/test_preference_ranks.py, on 2 ranks
def test_a_precomputed_reference_trains_the_same_adapter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          objective: str) -> None:
    """`preference.precompute_reference`: the reference log-probabilities computed in one pass before training are
    those the per-step reference forward computes (dropout off), so the adapters are the same. (DPO's precomputed
    runs, on 2 ranks under ddp and zero3, are compared with 1 rank's per-step one in tests/e2e/test_preference_ranks.py.)"""
    adapters = {}
    for precompute in (False, True):
        spec = write_job(tmp_path / str(precompute), objective, "llama")
        raw = yaml.safe_load(spec.read_text())
        spec.write_text(yaml.safe_dump({**raw, "preference": {"precompute_reference": precompute},
                                        "training": {**raw["training"], "max_steps": 4}}))
        run(spec, monkeypatch)
        adapters[precompute] = load_file(tmp_path / str(precompute) / "out" / "adapter" / "adapter_model.safetensors")
    assert adapters[True].keys() == adapters[False].keys()
    for key, value in adapters[False].items():
        assert torch.allclose(adapters[True][key], value, rtol=1e-4, atol=1e-6), key
