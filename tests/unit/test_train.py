"""trainer/train/loop.py end to end on a tiny llama: local data in, adapter + MLflow store + _SUCCESS out."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from mlflow import MlflowClient  # noqa: E402

from tests.models import chat_rows, tiny_model, write_chat_jsonl  # noqa: E402
from trainer.spec.io import spec_from_dict, spec_hash  # noqa: E402
from trainer.tracking.tracker import TRUNCATED, mlflow_params  # noqa: E402
from trainer.train import loop as train  # noqa: E402


def write_spec(folder: Path, **overrides: dict) -> Path:
    write_chat_jsonl(folder / "train.jsonl", 64, seed=0)
    with (folder / "train.jsonl").open("a") as f:
        f.write("{not json\n")  # one bad row: counted, skipped, reported
    write_chat_jsonl(folder / "eval.jsonl", 6, seed=1)
    spec = {
        "name": "tiny-llama",
        "base_model": str(tiny_model("llama")),
        "model": {"dtype": "float32"},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"train": "train.jsonl", "eval": "eval.jsonl", "max_seq_len": 128,
                 "bad_rows": {"max_bad_fraction": 0.05}},
        "training": {"max_steps": 30, "learning_rate": 2.0e-3, "per_device_batch_size": 2, "logging_steps": 5,
                     "warmup_ratio": 0.1},
        "resources": {"gpu": "none"},
        "output": {"uri": "out"},
        "eval": {"num_samples": 2, "max_new_tokens": 8},
    }
    for key, value in overrides.items():
        spec[key] = {**spec.get(key, {}), **value}
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    folder = tmp_path_factory.mktemp("train")
    spec_path = write_spec(folder)
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setenv("KUBETUNE_WORK_DIR", str(folder / "work"))
        assert train.main(["--spec", str(spec_path)]) == 0
    assert not (folder / "work" / "kubetune" / "tiny-llama").exists()  # staging and checkpoints cleaned up
    return spec_path, folder / "out", printed.getvalue()


def test_outputs_and_success_marker_written_last(finished_run: tuple[Path, Path, str]) -> None:
    spec_path, out, _ = finished_run
    files = {p.relative_to(out).as_posix(): p for p in out.rglob("*") if p.is_file()}
    for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "tokenizer/tokenizer.json",
                 "spec.yaml", "data_stats.json", "samples.json", "mlflow.db", "_SUCCESS"):
        assert name in files, name
    marker_time = files["_SUCCESS"].stat().st_mtime_ns
    assert all(p.stat().st_mtime_ns <= marker_time for p in files.values())
    marker = json.loads(files["_SUCCESS"].read_text())
    spec = spec_from_dict(yaml.safe_load(spec_path.read_text()))
    assert marker["spec_hash"] == spec_hash(spec)
    assert marker["steps"] == 30 and marker["final_loss"] > 0 and marker["run_id"]
    assert marker["tokens_trained"] > 0
    assert spec_from_dict(yaml.safe_load(files["spec.yaml"].read_text())) == spec
    stats = json.loads(files["data_stats.json"].read_text())
    train = stats["train"]  # 30 steps take more than one pass: the bad row is read (and counted) once per pass
    assert set(train["bad_rows"]) == {"invalid_json"} and len(train["bad_examples"]) == 1
    assert train["rows_read"] == train["rows_used"] + train["bad_rows"]["invalid_json"] + train["rows_unreached"]
    assert train["rows_read"] > 65 and stats["eval"]["rows_used"] == 6
    samples = json.loads(files["samples.json"].read_text())
    assert len(samples["prompt"]) == 2 and all(samples["before"]) and all(samples["after"])
    assert samples["reference"][0].startswith("The capital of")


def test_loss_falls_and_mlflow_has_params_metrics_artifacts(finished_run: tuple[Path, Path, str]) -> None:
    _, out, printed = finished_run
    marker = json.loads((out / "_SUCCESS").read_text())
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    run = client.get_run(marker["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny-llama"
    assert run.data.params["training.max_steps"] == "30" and run.data.params["adapter.r"] == "8"
    assert run.data.params["data.train"] == "train.jsonl"
    metrics = run.data.metrics
    for key in ("loss", "learning_rate", "grad_norm", "tokens_per_second", "eval_loss", "eval_perplexity",
                "data/packing_efficiency", "data/bad_rows", "data/bad_rows/invalid_json"):
        assert key in metrics, key
    train_stats = json.loads((out / "data_stats.json").read_text())["train"]  # the final accounting, in MLflow too
    assert metrics["data/bad_rows"] == train_stats["bad_rows"]["invalid_json"]
    assert metrics["data/rows_read"] == train_stats["rows_read"] and metrics["data/rows_used"] == train_stats["rows_used"]
    losses = [m.value for m in sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)]
    assert len(losses) == 7  # step 1, then every 5 steps
    assert losses[-1] < 0.8 * losses[0], losses
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", "spec.yaml", "data_stats.json", "samples.json"} <= artifacts
    assert "[train] step 30/30" in printed and "before → after" in printed and marker["run_id"] in printed


def test_adapter_loads_back_and_has_learned(finished_run: tuple[Path, Path, str]) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out, _ = finished_run
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    messages = chat_rows(1, seed=5)[0]["messages"]
    ids = tokenizer.apply_chat_template(messages, return_tensors="pt", return_dict=True)["input_ids"]
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, return_dict=True)["input_ids"]
    labels = ids.clone()
    labels[:, : len(prompt)] = -100  # the loss on the answer, as trained (train_on: completions)
    base = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.float32).eval()
    with torch.no_grad():
        before = base(input_ids=ids, labels=labels).loss.item()
        tuned = PeftModel.from_pretrained(base, out / "adapter").eval()
        after = tuned(input_ids=ids, labels=labels).loss.item()
    assert after < before - 1.0, (before, after)


def test_eval_loss_is_the_token_weighted_held_out_loss_of_the_export(finished_run: tuple[Path, Path, str]) -> None:
    """One definition: the Trainer's final eval_loss equals the export's held-out loss of the saved adapter."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.eval.run import held_out_loss
    from trainer.spec.io import load_spec

    spec_path, out, _ = finished_run
    marker = json.loads((out / "_SUCCESS").read_text())
    history = MlflowClient(f"sqlite:///{out / 'mlflow.db'}").get_metric_history(marker["run_id"], "eval_loss")
    final = max(history, key=lambda m: m.step).value
    base = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out / "adapter").eval()
    spec = load_spec(spec_path)
    want = held_out_loss(model, AutoTokenizer.from_pretrained(out / "tokenizer"), spec, base_dir=spec_path.parent)
    assert final == pytest.approx(want, rel=1e-5, abs=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_gpu_job_on_a_machine_without_cuda_fails_at_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec_path = write_spec(tmp_path, resources={"gpu": "h100"})
    assert train.main(["--spec", str(spec_path)]) == 2
    assert "set `resources.gpu: none`" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_invalid_spec_is_reported_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    spec_path = write_spec(tmp_path)
    assert train.main(["--spec", str(spec_path), "--set", "training.learning_rat=1"]) == 2
    assert "did you mean `learning_rate`" in capsys.readouterr().err


def test_the_trainer_starts_and_reads_its_spec_without_importing_mlflow(tmp_path: Path) -> None:
    """mlflow is imported only where tracking uses it (rank 0's Tracker): importing the training entry point,
    loading a spec, a run's object and the other ranks' Tracker, or rejecting a bad spec, never import it."""
    spec_path = write_spec(tmp_path)
    code = "\n".join([
        "import sys",
        "from pathlib import Path",
        "import trainer.train.loop as loop",
        f"spec = loop.load_spec({str(spec_path)!r})",
        f"job = loop.FineTune(spec, Path({str(tmp_path)!r}))",
        f"loop.Tracker(spec, Path({str(tmp_path / 'mlflow')!r}), active=False)  # every rank but 0",
        f"assert loop.main(['--spec', {str(spec_path)!r}, '--set', 'training.learning_rat=1']) == 2",
        "found = sorted(m for m in sys.modules if m.split('.')[0] == 'mlflow')",
        "assert not found, f'mlflow imported: {found}'",
    ])
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "mlflow").exists()


def test_long_param_values_are_cut_and_named() -> None:
    spec = spec_from_dict({"name": "p", "base_model": "org/m", "data": {"train": "t.jsonl"},
                           "eval": {"prompts": ["x" * 5000, "y" * 5000]}})
    params, cut = mlflow_params(spec)
    assert cut == ["eval.prompts"] and params["eval.prompts"].endswith(TRUNCATED)
    assert all(len(v) <= 6000 for v in params.values())


@pytest.mark.parametrize("family", ["llama3", "qwen2", "phi3", "gemma"])
def test_samples_stop_at_the_templates_end_of_turn(family: str) -> None:
    from tests.resources import end_of_turn, tokenizer_for
    from trainer.tracking.samples import stop_ids

    tokenizer = tokenizer_for(family)
    assert tokenizer.convert_tokens_to_ids(end_of_turn(family)) in stop_ids(tokenizer)
    assert tokenizer.eos_token_id in stop_ids(tokenizer)


def test_a_failed_run_leaves_failed_for_the_export_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The export job of this submission stops at once instead of waiting for a `_SUCCESS` that never comes."""
    spec_path = write_spec(tmp_path, data={"bad_rows": {"policy": "fail"}})
    monkeypatch.setenv("KUBETUNE_JOB_NAME", "tiny-llama-ab12c")
    monkeypatch.setenv("KUBETUNE_WORK_DIR", str(tmp_path / "work"))
    assert train.main(["--spec", str(spec_path)]) == 2
    failed = json.loads((tmp_path / "out" / "_FAILED").read_text())
    assert failed["job_name"] == "tiny-llama-ab12c" and "train.jsonl:65" in failed["error"]
    assert not (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.parametrize("family", ["llama3", "qwen2", "phi3", "gemma3", "harmony", "deepseek_r1_qwen", "gemma"])
def test_generation_prompts_tokenize_as_training_does(family: str) -> None:
    """Sample generation and HF eval prompts: the very ids training has before the answer (Phi-3's `<s>` too)."""
    from tests.chat import A, U
    from tests.resources import tokenizer_for
    from trainer.data.render import ChatRenderer
    from trainer.data.template_date import pin
    from trainer.tracking.samples import prompt_ids

    tokenizer = pin(tokenizer_for(family), None)  # as the trainer loads it: dated by the job, not the calendar
    messages = [U("What is the capital of Peru?"), A("Lima.")]
    trained = ChatRenderer(tokenizer, max_seq_len=4096).encode(messages)
    prompt = prompt_ids(tokenizer, messages[:-1])
    first_label = next(i for i, t in enumerate(trained.labels) if t != -100)
    agree = next((i for i, (a, b) in enumerate(zip(prompt, trained.input_ids, strict=False)) if a != b), len(prompt))
    # the prompt is what training has before the first trained token (Gemma 4's generation prompt also opens an
    # empty thought channel there, which the rendered history lacks: it may differ from that point on)
    assert agree >= min(len(prompt), first_label) - (3 if family == "gemma" else 0), (agree, len(prompt), first_label)
    assert prompt[0] == trained.input_ids[0]
