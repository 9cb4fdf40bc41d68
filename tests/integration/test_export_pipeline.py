"""The export job end to end, on tiny random models of four architectures with real tokenizers and
chat templates: `python -m trainer.export` reads a training output on a moto S3 server, merges,
converts to f16, quantizes to q8_0 and q4_k_m with the pinned llama.cpp, verifies, and registers
in a real `mlflow server` whose artifacts are proxied into the same S3 server. A corrupted GGUF
and a wrong chat template fail the gate.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.servers import mlflow_server, moto_s3, s3_env
from tests.models import chat_rows, copy_model
from tests.resources import chat_template, llama_cpp_dir

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]


def train_like(base: Path, out: Path, conversations: list[list[dict]], steps: int = 20) -> None:
    """What training leaves in output.uri: a LoRA adapter trained a few steps (so next-token
    distributions are peaked like a trained model's, not flat like a random one's), the tokenizer."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    batch = [torch.tensor([tok(tok.apply_chat_template(c, tokenize=False), add_special_tokens=False).input_ids])
             for c in conversations]
    losses = []
    for _ in range(steps):
        loss = sum(peft_model(ids, labels=ids).loss for ids in batch) / len(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 1.0, losses
    peft_model.save_pretrained(out / "adapter")
    tok.save_pretrained(out / "tokenizer")


# -- servers: moto S3 and an mlflow server proxying its artifacts into it -----------------------
@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[tuple[str, str]]:
    import boto3

    with moto_s3() as s3:
        client = boto3.client("s3", **{"endpoint_url": s3, "aws_access_key_id": "testing",
                                       "aws_secret_access_key": "testing", "region_name": "us-east-1"})
        for bucket in ("runs", "mlflow"):
            client.create_bucket(Bucket=bucket)
        with mlflow_server(tmp_path_factory.mktemp("mlflow"), artifacts="s3://mlflow/mlartifacts",
                           s3_endpoint=s3) as mlflow:
            yield s3, mlflow


def prepare(arch: str, tmp: Path, s3: str, mlflow: str, export: dict, **extra: Any) -> tuple[Path, str]:
    """A spec and a finished training output on S3 (with a real MLflow run); returns (spec path, run id)."""
    import s3fs
    from mlflow import MlflowClient

    base = copy_model(arch, tmp / "base")
    local_out = tmp / "trained"
    data_rows = chat_rows(4, seed=3, arch=arch)
    train_like(base, local_out, [r["messages"] for r in data_rows])
    data = tmp / "eval.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in data_rows))
    name = f"exp-{arch.replace('_', '-')}-{tmp.name[-6:].lower().replace('_', '-')}".strip("-")
    spec = {"name": name, "base_model": str(base), "model": {"dtype": "float32"},
            "data": {"train": str(data), "eval": str(data)}, "resources": {"gpu": "none"},
            "tracking": {"mlflow_uri": mlflow}, "output": {"uri": f"s3://runs/{name}"}, "export": export, **extra}
    spec_path = tmp / "job.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    client = MlflowClient(mlflow)
    run = client.create_run(client.create_experiment(name))
    (local_out / "data_stats.json").write_text(json.dumps({"train": {"rows_read": 4}}))
    marker = {"job_name": name, "run_id": run.info.run_id, "tracking_uri": mlflow, "spec_hash": "test"}
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3}, key="testing", secret="testing")
    fs.put(str(local_out) + "/", f"runs/{name}/", recursive=True)
    fs.pipe(f"runs/{name}/_SUCCESS", json.dumps(marker).encode())
    return spec_path, run.info.run_id


def run_export(spec: Path, s3: str, *sets: str) -> subprocess.CompletedProcess:
    env = os.environ | s3_env(s3) | {"KUBETUNE_LLAMA_CPP_DIR": str(llama_cpp_dir()), "HF_HUB_OFFLINE": "1",
                                     "PYTHONPATH": str(REPO), "KUBETUNE_WORK_DIR": str(spec.parent / "work")}
    cmd = [sys.executable, "-m", "trainer.export", "--spec", str(spec), *(x for s in sets for x in ("--set", s))]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)


def read_s3(s3: str, path: str) -> str:
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3}, key="testing", secret="testing").cat(path).decode(errors="replace")


# -- the tests -----------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "phi3", "qwen3_moe"])
def test_export_verifies_and_registers(arch, servers, tmp_path):
    from mlflow import MlflowClient

    s3, mlflow = servers
    export = {"gguf": ["q4_k_m", "q8_0", "f16"], "verify": {"golden_conversations": 3},
              "register": {"name": f"reg-{arch}"}, "lmstudio_publisher": "kubetune"}
    weighted = arch in ("llama", "phi3")  # phi3: fused qkv / gate_up tensors
    if weighted:
        export["imatrix"] = {"conversations": 4}
    extra = {"eval": {"metrics": ["exact_match", "rouge_l"], "max_new_tokens": 8}} if arch == "qwen2" else {}
    spec, run_id = prepare(arch, tmp_path, s3, mlflow, export, **extra)
    parent = {"kubetune.parent": "models:/sft@candidate", "kubetune.parent.resolved": "models:/sft/4"}
    for key, value in parent.items():  # what training records for adapter.init_from (trainer/model/init_from.py)
        MlflowClient(mlflow).set_tag(run_id, key, value)
    done = run_export(spec, s3)
    print(done.stdout)  # the job's report: shown with `pytest -s`
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "PASSED" in done.stdout
    name = yaml.safe_load(spec.read_text())["name"]
    report = json.loads(read_s3(s3, f"runs/{name}/export/verify.json"))
    by_quant = {f["quant"]: f for f in report["files"]}
    assert by_quant["f16"]["top1"] >= 0.98 and by_quant["q8_0"]["top1"] >= 0.95
    assert all(f["passed"] for f in report["files"])
    modelfile = read_s3(s3, f"runs/{name}/export/gguf/q4_k_m/Modelfile")
    assert f"FROM ./{name}-q4_k_m.gguf" in modelfile and "TEMPLATE" in modelfile and "PARAMETER stop" in modelfile

    client = MlflowClient(mlflow)
    versions = client.search_model_versions(f"name = 'reg-{arch}'")
    kinds = sorted(v.tags["kubetune.kind"] for v in versions)
    assert kinds == ["adapter", "f16", "q4_k_m", "q8_0"]
    assert all(v.tags["kubetune.objective"] == "sft" and parent.items() <= v.tags.items() for v in versions)
    alias = client.get_model_version_by_alias(f"reg-{arch}", "candidate")
    assert alias.tags["kubetune.kind"] == "q4_k_m"
    assert alias.tags["kubetune.run_id"] == run_id and alias.run_id == run_id
    assert alias.tags["kubetune.llama_cpp"] == "0.3.36" and len(alias.tags["kubetune.sha256"]) == 64
    assert alias.tags["kubetune.verify.passed"] == "true"
    assert "| started from | `models:/sft@candidate` = `models:/sft/4` |" in alias.description  # the model card
    if extra:  # task metrics of each GGUF through llama.cpp, as registry tags
        rouge = float(alias.tags["kubetune.eval.rouge_l"])
        assert 0.0 <= rouge <= 1.0 and alias.tags["kubetune.eval.answers"] == "3"
        scored = json.loads(read_s3(s3, f"runs/{name}/export/eval-q4_k_m.json"))
        assert scored["means"]["rouge_l"] == pytest.approx(rouge, abs=1e-4) and len(scored["answers"]["answer"]) == 3
        merged = json.loads(read_s3(s3, f"runs/{name}/export/eval-merged.json"))  # the reference: the merged model
        # its 7-token references fit eval.max_new_tokens (8): no warning (tests/unit/test_eval_room.py warns)
        assert merged["too_short"] is None and scored["too_short"] is None
        assert "warning: eval.max_new_tokens" not in done.stdout
        adapter = next(v for v in versions if v.tags["kubetune.kind"] == "adapter")
        assert float(adapter.tags["kubetune.eval.rouge_l"]) == pytest.approx(merged["means"]["rouge_l"], abs=1e-4)
        assert merged["loss"] > 0 and float(adapter.tags["kubetune.eval.perplexity"]) > 1.0
        run = client.get_run(run_id).data.metrics  # and in the training run, next to its own metrics
        assert run["export.q4_k_m.rouge_l"] == pytest.approx(rouge, abs=1e-4)
        assert run["export.merged.rouge_l"] == pytest.approx(merged["means"]["rouge_l"], abs=1e-6)
    else:
        assert not any(k.startswith("kubetune.eval.") for k in alias.tags)
    if weighted:
        assert alias.tags["kubetune.imatrix"].startswith("computed on 4 conversations")
        assert read_s3(s3, f"runs/{name}/export/imatrix.gguf")[:4] == "GGUF"
        assert "with the importance matrix" in done.stdout
    else:
        assert alias.tags["kubetune.imatrix"] == "none"
    assert alias.source.startswith("models:/m-")  # an MLflow Model (tests/integration/test_registry_pyfunc.py)
    artifacts = {f.path for f in client.list_logged_model_artifacts(alias.source.removeprefix("models:/"), "artifacts")}
    assert {f"artifacts/{name}-q4_k_m.gguf", "artifacts/Modelfile"} <= artifacts

    if arch == "qwen2":  # re-running the export for the same run adds no version
        again = run_export(spec, s3)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "already there" in again.stdout
        assert len(client.search_model_versions(f"name = 'reg-{arch}'")) == 4
        fewer = run_export(spec, s3, "export.gguf=[q8_0]")  # a re-export replaces the last one's files
        assert fewer.returncode == 0, fewer.stderr[-3000:]
        import s3fs

        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3}, key="testing", secret="testing")
        assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"runs/{name}/export/gguf", refresh=True)) == ["q8_0"]


def test_failed_gate_registers_nothing(servers, tmp_path):
    from mlflow import MlflowClient

    s3, mlflow = servers
    impossible = {"q8_0": {"min_top1": 1.0, "max_kl": 0.0}}  # no quantized file is bit-exact
    spec, _ = prepare("llama", tmp_path, s3, mlflow, {"gguf": ["q8_0"], "verify": {"golden_conversations": 2,
                      "thresholds": impossible}, "register": {"name": "reg-failed"}})
    name = yaml.safe_load(spec.read_text())["name"]
    done = run_export(spec, s3)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    assert "FAILED" in done.stdout and "nothing registered" in done.stdout
    with pytest.raises(Exception, match="(?i)not found|does not exist|RESOURCE_DOES_NOT_EXIST"):
        MlflowClient(mlflow).get_registered_model("reg-failed")
    report = read_s3(s3, f"runs/{name}/export/verify.txt")
    assert "q8_0 kl" in report or "q8_0 top1" in report
    with pytest.raises(FileNotFoundError):
        read_s3(s3, f"runs/{name}/export/_SUCCESS")


def test_wrong_chat_template_fails_the_gate(tmp_path):
    """A folder whose tokenizer_config.json still holds an old `chat_template` next to the
    chat_template.jinja training used: transformers renders with the .jinja file, llama.cpp's
    converter embeds the old one. The gate must catch it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.data.render import end_of_turn
    from trainer.export import gguf, verify

    base = copy_model("qwen2", tmp_path / "base")
    config = json.loads((base / "tokenizer_config.json").read_text())
    config["chat_template"] = chat_template("llama3")
    (base / "tokenizer_config.json").write_text(json.dumps(config))
    tok = AutoTokenizer.from_pretrained(base)
    assert "<|im_start|>" in tok.chat_template  # transformers: the .jinja file wins
    f16 = gguf.convert(base, tmp_path / "m-f16.gguf", "f16", tmp_path / "convert.log").path
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    golden = verify.reference(model, tok, [r["messages"] for r in chat_rows(2, seed=4)])
    report = verify.verify_file(f16, "f16", tok, [tok.eos_token, end_of_turn(tok)], golden, 0.98, 0.005)
    assert [c.name for c in report.failures()] == ["chat_template"], report.failures()
    assert "renders differently" in report.failures()[0].detail


def test_template_without_end_of_turn_token_fails_the_gate(tmp_path):
    """A custom template that ends turns with plain text: rendered identically everywhere, but
    nothing would ever stop generation after an answer (llama.cpp #5040, ollama #6823)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.export import gguf, verify

    base = copy_model("llama", tmp_path / "base")
    (base / "chat_template.jinja").write_text(
        "{% for m in messages %}### {{ m.role }}:\n{{ m.content }}\n\n{% endfor %}"
        "{% if add_generation_prompt %}### assistant:\n{% endif %}")
    tok = AutoTokenizer.from_pretrained(base)
    f16 = gguf.convert(base, tmp_path / "m-f16.gguf", "f16", tmp_path / "convert.log").path
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    golden = verify.reference(model, tok, [r["messages"] for r in chat_rows(2, seed=6)])
    report = verify.verify_file(f16, "f16", tok, [tok.eos_token], golden, 0.98, 0.005)
    assert [c.name for c in report.failures()] == ["stopping"], report.failures()
    assert "no special token" in report.failures()[0].detail


def test_corrupted_gguf_fails_the_gate(tmp_path):
    """The gate itself, on a GGUF whose weights were damaged after conversion."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.data.render import end_of_turn
    from trainer.export import gguf, verify

    base = copy_model("qwen2", tmp_path / "base")
    f16 = gguf.convert(base, tmp_path / "m-f16.gguf", "f16", tmp_path / "convert.log").path
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    golden = verify.reference(model, tok, [r["messages"] for r in chat_rows(2, seed=5)])
    eos = [tok.eos_token, end_of_turn(tok)]
    good = verify.verify_file(f16, "f16", tok, eos, golden, 0.98, 0.005)
    assert good.passed, good.failures()

    from gguf import GGUFReader

    reader = GGUFReader(str(f16))
    tensor = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    start = int(tensor.data_offset)
    blob = bytearray(f16.read_bytes())
    noise = np.random.default_rng(0).standard_normal(tensor.n_elements).astype(np.float16).tobytes()
    blob[start:start + len(noise)] = noise
    bad = tmp_path / "m-f16-corrupted.gguf"
    bad.write_bytes(bytes(blob))
    report = verify.verify_file(bad, "f16", tok, eos, golden, 0.98, 0.005)
    assert not report.passed
    assert {c.name for c in report.failures()} & {"top1", "kl"}
    assert report.kl > good.kl * 10
