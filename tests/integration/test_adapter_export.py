"""`export.mode: adapters` end to end: two adapters trained briefly (PEFT on the tiny Llama, as
test_export_pipeline.py's `train_like` does: different data, so different adapters) on one base, exported one
after the other into the same local shared-base store with `python -m trainer.export`: each base GGUF type is
written once by the first export and reused (same file, same inode and mtime) by the second; each export writes
its own LoRA GGUF, gated over the base by llama.cpp, and registers it in a real `mlflow server` tagged with the
base's registered version; the base is registered once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.servers import mlflow_server
from tests.integration.test_export_pipeline import train_like
from tests.models import chat_rows, copy_model
from tests.resources import llama_cpp_dir

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]
TYPES = ["q8_0", "f16"]


def job(tmp: Path, base: Path, name: str, seed: int, mlflow: str) -> Path:
    """A spec and its finished training output (adapter, tokenizer, `_SUCCESS` with a real MLflow run)."""
    from mlflow import MlflowClient

    rows = chat_rows(4, seed=seed, arch="llama")
    out = tmp / "runs" / name
    train_like(base, out, [r["messages"] for r in rows])
    data = tmp / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    client = MlflowClient(mlflow)
    run = client.create_run(client.create_experiment(name))
    (out / "_SUCCESS").write_text(json.dumps({"job_name": name, "run_id": run.info.run_id, "tracking_uri": mlflow,
                                              "spec_hash": "test"}))
    spec = {"name": name, "base_model": str(base), "model": {"dtype": "float32"},
            "data": {"train": str(data), "eval": str(data)}, "resources": {"gpu": "none"},
            "tracking": {"mlflow_uri": mlflow}, "output": {"uri": str(out)},
            "export": {"mode": "adapters", "gguf": TYPES, "verify": {"golden_conversations": 3},
                       "register": {"name": name}, "lmstudio_publisher": "kubetune"}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def export(spec: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"KUBETUNE_LLAMA_CPP_DIR": str(llama_cpp_dir()), "HF_HUB_OFFLINE": "1",
                        "PYTHONPATH": str(REPO), "KUBETUNE_WORK_DIR": str(spec.parent / "work" / spec.stem)}
    return subprocess.run([sys.executable, "-m", "trainer.export", "--spec", str(spec)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=900)


def base_files(store: Path) -> dict[str, Path]:
    """quant -> the base GGUF its `_SUCCESS` names, for every key folder of the store."""
    found = {}
    for marker in store.glob("*/_SUCCESS"):
        m = json.loads(marker.read_text())
        found[m["quant"]] = marker.parent / m["file"]
    return found


def greedy(llm, prompt: str) -> str:
    return llm.create_completion(prompt, max_tokens=24, temperature=0.0, seed=0)["choices"][0]["text"]


def loads_base_and_adapter(mlflow: str, name: str, base: Path, lora: Path, cache: Path) -> None:
    """`mlflow.pyfunc.load_model` of the job's alias (a LoRA version) downloads the shared base into the cache and has
    llama.cpp apply the LoRA: it continues a prompt as base + LoRA loaded directly do, not as the base alone."""
    import mlflow as mlflow_lib

    from trainer.export import verify

    mlflow_lib.set_tracking_uri(mlflow)
    os.environ["KUBETUNE_BASE_CACHE"] = str(cache)
    try:
        chat = mlflow_lib.pyfunc.load_model(f"models:/{name}@candidate")
    finally:
        del os.environ["KUBETUNE_BASE_CACHE"]
    (cached,) = cache.glob("*/*.gguf")
    assert cached.name == base.name and cached.read_bytes() == base.read_bytes()
    llm = chat.unwrap_python_model().llm
    assert llm.model_path == str(cached) and Path(llm.lora_path).read_bytes() == lora.read_bytes()
    prompt = "Which rows of the orders table have no customer?"
    served, direct, plain = greedy(llm, prompt), greedy(verify.load(base, 64, lora=lora), prompt), greedy(
        verify.load(base, 64), prompt)
    assert served == direct and served != plain, (served, direct, plain)
    (answer,) = chat.predict({"messages": [{"role": "user", "content": "Hello"}]}, params={"max_tokens": 4})
    assert isinstance(answer, str)


def test_two_adapters_share_one_base(tmp_path):
    from mlflow import MlflowClient

    base = copy_model("llama", tmp_path / "base")
    with mlflow_server(tmp_path / "mlflow") as mlflow:
        specs = [job(tmp_path, base, name, seed, mlflow) for name, seed in (("dim-a", 3), ("dim-b", 11))]
        first = export(specs[0])
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        store = tmp_path / "runs" / "bases"
        bases = base_files(store)
        assert sorted(bases) == sorted(TYPES)
        stats = {q: (p.stat().st_ino, p.stat().st_mtime_ns) for q, p in bases.items()}
        assert all(f"shared base {q}: {bases[q]}" in first.stdout and "written in" in first.stdout for q in TYPES)

        second = export(specs[1])
        assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
        for q in TYPES:
            assert f"shared base {q}: {bases[q]} " in second.stdout and "reused" in second.stdout, second.stdout
        assert base_files(store) == bases  # no other key, no second writer
        assert {q: (p.stat().st_ino, p.stat().st_mtime_ns) for q, p in bases.items()} == stats
        assert all(len([d for d in p.parent.parent.iterdir() if d.is_dir()]) == 1 for p in bases.values())

        client = MlflowClient(mlflow)
        loras, base_versions = {}, set()
        for spec in specs:
            name = spec.stem
            exp = tmp_path / "runs" / name / "export"
            done = json.loads((exp / "_SUCCESS").read_text())
            assert done["passed"] and done["mode"] == "adapters" and set(done["bases"]) == set(TYPES)
            report = json.loads((exp / "verify-adapters.json").read_text())
            assert report["passed"] and {f["quant"] for f in report["files"]} == set(TYPES)
            floor = next(f for f in report["files"] if f["quant"] == "q8_0")
            assert any(c["name"] == "floor" and c["passed"] for c in floor["checks"])
            lora = exp / "adapters" / "q8_0" / f"{name}-lora.gguf"
            loras[name] = lora.read_bytes()
            modelfile = (exp / "adapters" / "q8_0" / "Modelfile").read_text()
            assert modelfile.startswith(f"FROM {bases['q8_0']}\nADAPTER ./{lora.name}\n")
            assert "--lora" in (exp / "adapters" / "q8_0" / "README.md").read_text()
            side = exp / "lmstudio" / "kubetune" / "base"
            assert sorted(p.name for p in side.iterdir()) == sorted([*(p.name for p in bases.values()), lora.name])
            assert not list(exp.rglob("gguf/*"))  # no merged GGUF in adapters mode
            versions = {v.tags["kubetune.kind"]: v for v in client.search_model_versions(f"name = '{name}'")}
            assert set(versions) == {"adapter", "lora-q8_0", "lora-f16"}
            for q in TYPES:
                tags = versions[f"lora-{q}"].tags
                base_mv = client.get_model_version(tags["kubetune.base.name"], tags["kubetune.base.version"])
                assert base_mv.tags["kubetune.quant"] == q and base_mv.tags["kubetune.base.key"] == tags["kubetune.base.key"]
                assert tags["kubetune.base.sha256"] == base_mv.tags["kubetune.sha256"]
                assert tags["kubetune.verify.passed"] == "true" and tags["kubetune.run_id"]
                base_versions.add((tags["kubetune.base.name"], tags["kubetune.base.version"]))
            assert client.get_model_version_by_alias(name, "candidate").tags["kubetune.kind"] == "lora-q8_0"
        assert loras["dim-a"] != loras["dim-b"]
        loads_base_and_adapter(mlflow, "dim-a", bases["q8_0"],
                               tmp_path / "runs" / "dim-a" / "export" / "adapters" / "q8_0" / "dim-a-lora.gguf",
                               tmp_path / "cache")
        assert len(base_versions) == len(TYPES)  # both jobs point at the same base versions
        (base_name,) = {n for n, _ in base_versions}
        assert len(client.search_model_versions(f"name = '{base_name}'")) == len(TYPES)  # registered once
        assert "already there" in second.stdout
