"""`export.mode: both` and the shared base store on S3, end to end: two adapters trained briefly on one tiny Llama
(tests/integration/test_adapter_export.py's `job` recipe), their training outputs on a moto S3 server, exported one
after the other with `python -m trainer.export` into a real `mlflow server`:

- `dim-a`, `mode: both`: the merged q8_0 GGUF (gated, registered, the alias on it) AND the shared base + LoRA GGUF
  (gated, registered with the base's version tag), in one run; its `_SUCCESS` lists both;
- `dim-b`, `mode: adapters`: finds the base under `s3://runs/bases/` (the default beside the s3:// output folders)
  and does not upload it again (the object's ETag and LastModified stay; the log says `reused`); the base's
  registered version (its source: the S3 URI) is registered once and named by both adapters.

A consumer of the registry loads dim-b's LoRA version as an MLflow pyfunc model: the base comes from its S3 URI into
the base cache, and llama.cpp applies the LoRA (tests/integration/test_adapter_export.py `loads_base_and_adapter`).

Then `launch status` / `launch list` of the two jobs as local jobs (records laid out as `launch submit --local`
writes them, over a copy of the real export outputs) show the base once and each adapter with its gate result.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.integration.servers import mlflow_server, moto_s3, s3_env
from tests.integration.test_adapter_export import loads_base_and_adapter
from tests.integration.test_export_pipeline import train_like
from tests.models import chat_rows, copy_model
from tests.resources import llama_cpp_dir

pytestmark = [pytest.mark.slow, pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]
TYPES = ["q8_0"]


def s3fs_of(endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, key="testing", secret="testing")


def job(tmp: Path, s3: str, base: Path, name: str, seed: int, mlflow: str, mode: str) -> Path:
    """A spec and its finished training output on S3 (adapter, tokenizer, `_SUCCESS` with a real MLflow run)."""
    from mlflow import MlflowClient

    rows = chat_rows(4, seed=seed, arch="llama")
    local = tmp / "trained" / name
    train_like(base, local, [r["messages"] for r in rows])
    data = tmp / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    client = MlflowClient(mlflow)
    run = client.create_run(client.create_experiment(name))
    fs = s3fs_of(s3)
    fs.put(str(local) + "/", f"runs/{name}/", recursive=True)
    fs.pipe(f"runs/{name}/_SUCCESS", json.dumps({"job_name": name, "run_id": run.info.run_id, "tracking_uri": mlflow,
                                                 "spec_hash": "test"}).encode())
    spec = {"name": name, "base_model": str(base), "model": {"dtype": "float32"},
            "data": {"train": str(data), "eval": str(data)}, "resources": {"gpu": "none"},
            "tracking": {"mlflow_uri": mlflow}, "output": {"uri": f"s3://runs/{name}"},
            "export": {"mode": mode, "gguf": TYPES, "verify": {"golden_conversations": 3},
                       "register": {"name": name}}}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def export(spec: Path, s3: str) -> subprocess.CompletedProcess:
    env = os.environ | s3_env(s3) | {"KUBETUNE_LLAMA_CPP_DIR": str(llama_cpp_dir()), "HF_HUB_OFFLINE": "1",
                                     "PYTHONPATH": str(REPO), "KUBETUNE_WORK_DIR": str(spec.parent / "work" / spec.stem)}
    return subprocess.run([sys.executable, "-m", "trainer.export", "--spec", str(spec)], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=900)


def s3_bases(s3: str) -> dict[str, tuple[str, str, str]]:
    """quant -> (URI, ETag, LastModified) of the base GGUF each marker under s3://runs/bases/ names."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3, aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    found = {}
    for obj in client.list_objects_v2(Bucket="runs", Prefix="bases/").get("Contents", []):
        if obj["Key"].endswith("/_SUCCESS"):
            m = json.loads(client.get_object(Bucket="runs", Key=obj["Key"])["Body"].read())
            key = f"{obj['Key'].rsplit('/', 1)[0]}/{m['file']}"
            head = client.head_object(Bucket="runs", Key=key)
            found[m["quant"]] = (f"s3://runs/{key}", head["ETag"], str(head["LastModified"]))
    return found


def test_both_modes_in_one_export_and_the_base_shared_on_s3(tmp_path, monkeypatch):
    import boto3
    from mlflow import MlflowClient

    base = copy_model("llama", tmp_path / "base")
    with moto_s3() as s3, mlflow_server(tmp_path / "mlflow") as mlflow:
        boto3.client("s3", endpoint_url=s3, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket="runs")
        a = job(tmp_path, s3, base, "dim-a", 3, mlflow, "both")
        b = job(tmp_path, s3, base, "dim-b", 11, mlflow, "adapters")
        first = export(a, s3)
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-4000:]
        bases = s3_bases(s3)
        assert sorted(bases) == TYPES and all(uri.startswith("s3://runs/bases/") for uri, _, _ in bases.values())
        assert all(f"shared base {q}: {bases[q][0]} " in first.stdout for q in TYPES) and "written in" in first.stdout

        second = export(b, s3)
        assert second.returncode == 0, second.stdout[-4000:] + second.stderr[-4000:]
        for q in TYPES:
            assert f"shared base {q}: {bases[q][0]} " in second.stdout and "reused" in second.stdout, second.stdout
        assert s3_bases(s3) == bases  # same object: not uploaded again (ETag, LastModified), no other key
        fs = s3fs_of(s3)
        for uri, _, _ in bases.values():  # no second writer folder under the key
            key = uri.removeprefix("s3://").rsplit("/", 2)[0]
            assert [p for p in fs.ls(key) if not p.endswith("_SUCCESS")] == [uri.removeprefix("s3://").rsplit("/", 1)[0]]

        client = MlflowClient(mlflow)
        done_a = json.loads(fs.cat("runs/dim-a/export/_SUCCESS"))
        assert done_a["passed"] and done_a["mode"] == "both"
        assert done_a["files"] == {"q8_0": "dim-a-q8_0.gguf"} and set(done_a["bases"]) == set(done_a["adapters"]) == {"q8_0"}
        assert fs.exists("runs/dim-a/export/gguf/q8_0/dim-a-q8_0.gguf")
        assert fs.exists("runs/dim-a/export/adapters/q8_0/dim-a-lora.gguf")
        for report in ("verify.json", "verify-adapters.json"):
            assert json.loads(fs.cat(f"runs/dim-a/export/{report}"))["passed"], report
        kinds = {r["kind"] for r in done_a["registered"]}
        assert kinds == {"adapter", "q8_0", "lora-q8_0", "base-q8_0"}, done_a["registered"]

        versions = {v.tags["kubetune.kind"]: v for v in client.search_model_versions("name = 'dim-a'")}
        assert set(versions) == {"adapter", "q8_0", "lora-q8_0"}
        assert client.get_model_version_by_alias("dim-a", "candidate").version == versions["q8_0"].version
        assert client.get_model_version_by_alias("dim-b", "candidate").tags["kubetune.kind"] == "lora-q8_0"

        base_versions = set()
        for name in ("dim-a", "dim-b"):
            tags = next(v for v in client.search_model_versions(f"name = '{name}'")
                        if v.tags["kubetune.kind"] == "lora-q8_0").tags
            assert tags["kubetune.verify.passed"] == "true" and tags["kubetune.base.file"] == bases["q8_0"][0]
            base_mv = client.get_model_version(tags["kubetune.base.name"], tags["kubetune.base.version"])
            assert base_mv.source == bases["q8_0"][0]  # the S3 object itself, nothing copied
            assert base_mv.tags["kubetune.sha256"] == tags["kubetune.base.sha256"]
            base_versions.add((tags["kubetune.base.name"], tags["kubetune.base.version"]))
        (base_name, _), = base_versions
        assert len(client.search_model_versions(f"name = '{base_name}'")) == 1  # registered once
        assert "already there" in second.stdout

        outputs = tmp_path / "outputs"  # what `launch status` of local jobs reads: the export's own files
        for name in ("dim-a", "dim-b"):
            fs.get(f"runs/{name}/", str(outputs / name) + "/", recursive=True)
        loras = {name: next(v.version for v in client.search_model_versions(f"name = '{name}'")
                            if v.tags["kubetune.kind"] == "lora-q8_0") for name in ("dim-a", "dim-b")}

        # a consumer of the registry loads dim-b's LoRA version as an MLflow pyfunc model: its base is fetched from S3
        for key, value in s3_env(s3).items():
            monkeypatch.setenv(key, value)
        s3_base = tmp_path / "s3-base" / bases["q8_0"][0].rsplit("/", 1)[1]
        s3_base.parent.mkdir()
        fs.get(bases["q8_0"][0], str(s3_base))
        loads_base_and_adapter(mlflow, "dim-b", s3_base, outputs / "dim-b" / "export" / "adapters" / "q8_0" /
                               "dim-b-lora.gguf", tmp_path / "base-cache")
    check_launch_views(monkeypatch, tmp_path, outputs, bases["q8_0"][0], f"{base_name} v1", loras, versions["q8_0"].version)


def local_record(name: str, output: Path) -> None:
    """The record `launch submit --local` leaves of a job whose training and export pods succeeded."""
    from launcher import local_jobs

    folder = local_jobs.root() / name
    (folder / "logs").mkdir(parents=True)
    pods = [{"rank": 0, "component": "training", "phase": "Succeeded", "reason": "", "pid": None, "exit_code": 0,
             "log": "logs/rank-0.log"},
            {"rank": None, "component": "export", "phase": "Succeeded", "reason": "", "pid": None, "exit_code": 0,
             "log": "logs/export.log"}]
    local_jobs.Record(name, name, f"{name}.yaml", str(output), 1, True, folder=folder, created=local_jobs.now(),
                      started=local_jobs.now(), ended=local_jobs.now(), status="succeeded", phase="export",
                      exit_code=0, pods=pods).save()


def check_launch_views(monkeypatch, tmp: Path, outputs: Path, base_uri: str, base_registered: str,
                       loras: dict[str, str], merged_version: str) -> None:
    """`launch status` / `launch list` of the two jobs as local jobs, over the real export outputs: the merged GGUF
    of `both`, the shared base (once in the list) and each adapter GGUF with its gate result and version."""
    import re

    from click.testing import CliRunner

    from launcher.cli import main

    monkeypatch.setenv("KUBETUNE_HOME", str(tmp / "home"))
    for name in loras:
        local_record(name, outputs / name)
    runner = CliRunner()
    for name, how in (("dim-a", "written by this job"), ("dim-b", "reused")):
        done = runner.invoke(main, ["status", name, "--local"])
        assert done.exit_code == 0, done.output
        exp = outputs / name / "export"
        assert re.search(rf"export: +mode {'both' if name == 'dim-a' else 'adapters'}; files in {exp}\n", done.output)
        assert re.search(rf"base +q8_0 +{re.escape(base_uri)} +shared, {how} +{base_registered}\n", done.output)
        lora = exp / "adapters" / "q8_0" / f"{name}-lora.gguf"
        assert re.search(rf"adapter +q8_0 +{lora} +gate passed \(top-1 \d+\.\d%, KL \d\.\d{{5}}\) +{name} "
                         rf"v{loras[name]}\n", done.output), done.output
        merged = re.search(rf"merged +q8_0 +{exp / 'gguf' / 'q8_0' / 'dim-a-q8_0.gguf'} +- +dim-a v{merged_version}\n",
                           done.output)
        assert bool(merged) == (name == "dim-a"), done.output
        data = json.loads(runner.invoke(main, ["status", name, "--local", "-o", "json"]).stdout)["exported"]
        assert data["bases"]["q8_0"]["file"] == base_uri and data["bases"]["q8_0"]["registered"] == base_registered
        assert data["adapters"]["q8_0"]["passed"] is True and data["adapters"]["q8_0"]["file"] == str(lora)
        assert 0.9 <= data["adapters"]["q8_0"]["top1"] <= 1 and set(data["merged"]) == ({"q8_0"} if name == "dim-a" else set())
    listed = runner.invoke(main, ["list", "--local"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.count(base_uri) == 1  # the shared base once, with both jobs over it
    assert re.search(rf"q8_0 +{re.escape(base_uri)} +{base_registered} +dim-a, dim-b\n", listed.output), listed.output
    for name in loras:
        assert re.search(rf"{name} +q8_0 +\S+/{name}-lora.gguf +passed \(top-1 [^)]*\) +{name} v{loras[name]}\n",
                         listed.output), listed.output
