"""`launch status` of a cluster job whose export ran with `export.mode: adapters`: its output folder (S3) is not read
from the launcher, so what it shows comes from the real `mlflow server`: each LoRA GGUF version registered from the
job's run, with the gate figures and the shared base version it needs, as its `kubetune.*` tags say (the tags
trainer/export/adapters.py `register_adapters` sets; tests/integration/test_adapter_export_s3.py proves them)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.cluster_cli import Kube, cluster_spec, submit
from tests.integration.fake_kube_workloads import PodState
from tests.integration.servers import mlflow_server
from tests.integration.test_cluster_status import log_run

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("helm_binary")]
BASE_FILE = "s3://runs/bases/0123456789abcdef/a1b2c3d4e5f6/base-q8_0.gguf"


def test_status_shows_each_adapter_gguf_with_its_gate_and_base(kube: Kube, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    with mlflow_server(tmp_path / "mlflow") as url:
        spec = cluster_spec(tmp_path, name="dim-a", tracking={"mlflow_uri": url, "experiment": "gov"})
        name = submit(kube, spec)
        kube.fake.set_pods("ml", name, {0: PodState("Succeeded", exit_code=0), 1: PodState("Succeeded", exit_code=0)})
        rid = log_run(url, "gov", name, finish=True)  # its version 1: a merged GGUF, aliased
        client = MlflowClient(url)
        client.create_registered_model("llama-base-1a2b3c4d")
        base = client.create_model_version("llama-base-1a2b3c4d", source=BASE_FILE, run_id=rid,
                                           tags={"kubetune.kind": "base", "kubetune.quant": "q8_0"})
        tags = {"kubetune.kind": "lora-q8_0", "kubetune.quant": "q8_0", "kubetune.file": "dim-a-lora.gguf",
                "kubetune.verify.passed": "true", "kubetune.verify.top1": "0.9833", "kubetune.verify.kl": "0.001234",
                "kubetune.base.name": "llama-base-1a2b3c4d", "kubetune.base.version": base.version,
                "kubetune.base.sha256": "ab" * 32, "kubetune.base.key": "0123456789abcdef",
                "kubetune.base.file": BASE_FILE}
        lora = client.create_model_version(name, source=f"runs:/{rid}/export/lora-q8_0", run_id=rid, tags=tags)
        done = kube.run("status", name)
        assert done.exit_code == 0, done.output
        assert (f"  adapter GGUF lora-q8_0: models:/{name}/{lora.version}, gate passed (top-1 98.3%, KL 0.00123); "
                f"base models:/llama-base-1a2b3c4d/{base.version} ({BASE_FILE})") in done.stdout, done.stdout
        assert done.stdout.count("adapter GGUF") == 1  # the merged version and the base are not adapters
        data = json.loads(kube.run("status", name, "-o", "json").stdout)
        found = {v["version"]: v for v in data["mlflow"]["registered_versions"]}
        assert found[lora.version]["tags"]["kubetune.base.version"] == base.version


def test_list_exports_shows_the_matrix_cells_over_one_shared_base(kube: Kube, tmp_path: Path) -> None:
    """`launch list --exports`: two submissions (a matrix's cells) whose exports registered LoRA GGUFs over the same
    base version: the base once, with both jobs over it, then each adapter GGUF with its gate result."""
    from mlflow import MlflowClient

    with mlflow_server(tmp_path / "mlflow") as url:
        client = MlflowClient(url)
        client.create_registered_model("llama-base-1a2b3c4d")
        names = []
        for i, dim in enumerate(("dim-a", "dim-b")):
            spec = cluster_spec(tmp_path, name=dim, tracking={"mlflow_uri": url, "experiment": "gov"},
                                export={"mode": "adapters", "gguf": ["q8_0"]})
            name = submit(kube, spec)
            kube.fake.set_pods("ml", name, {0: PodState("Succeeded", exit_code=0), 1: PodState("Succeeded", exit_code=0)})
            kube.fake.set_pods("ml", f"{name}-export", PodState("Succeeded", exit_code=0))
            rid = log_run(url, "gov", name, finish=True)
            if i == 0:
                base = client.create_model_version("llama-base-1a2b3c4d", source=BASE_FILE, run_id=rid,
                                                   tags={"kubetune.kind": "base", "kubetune.quant": "q8_0"})
            tags = {"kubetune.kind": "lora-q8_0", "kubetune.file": f"{dim}-lora.gguf", "kubetune.verify.passed": "true",
                    "kubetune.verify.top1": f"{0.98 - i / 100:.4f}", "kubetune.verify.kl": "0.001234",
                    "kubetune.base.name": "llama-base-1a2b3c4d", "kubetune.base.version": base.version,
                    "kubetune.base.key": "0123456789abcdef", "kubetune.base.file": BASE_FILE}
            client.create_model_version(name, source=f"runs:/{rid}/export/lora-q8_0", run_id=rid, tags=tags)
            names.append(name)
        plain = kube.run("list", "-n", "ml")
        assert plain.exit_code == 0 and "shared base GGUFs" not in plain.stdout  # only when asked: a query per job
        done = kube.run("list", "-n", "ml", "--exports")
        assert done.exit_code == 0, done.output
        lines = done.stdout.splitlines()
        (row,) = [line for line in lines if BASE_FILE in line]
        assert f"llama-base-1a2b3c4d v{base.version}" in row and all(n in row for n in names), done.stdout
        for name, top1 in zip(names, ("98.0%", "97.0%"), strict=True):
            (adapter,) = [line for line in lines if line.split()[:1] == [name] and "lora.gguf" in line]
            assert f"passed (top-1 {top1}, KL 0.00123)" in adapter, adapter
        data = json.loads(kube.run("list", "-n", "ml", "--exports", "-o", "json").stdout)
        cells = {s["name"]: s for g in data["groups"] for s in g["submissions"]}
        assert cells[names[1]]["exported"]["bases"]["q8_0"]["file"] == BASE_FILE
