"""The trainer against real servers on loopback: model and data from S3 (moto), outputs to S3, the
run in a real `mlflow server` — the way a pod sees them."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.integration.servers import mlflow_server, moto_s3, s3_env  # noqa: E402
from tests.models import chat_rows, tiny_model  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """Moto S3 with the tiny llama under s3://models/ and chat data under s3://datasets/."""
    import boto3

    with moto_s3() as endpoint, pytest.MonkeyPatch.context() as mp:
        for key, value in s3_env(endpoint).items():
            mp.setenv(key, value)
        client = boto3.client("s3")
        for bucket in ("models", "datasets", "runs"):
            client.create_bucket(Bucket=bucket)
        model = tiny_model("llama")
        for f in model.rglob("*"):
            if f.is_file():
                client.upload_file(str(f), "models", f"tiny-llama/{f.relative_to(model).as_posix()}")
        for name, rows in (("train-0.jsonl", chat_rows(32, 0)), ("train-1.jsonl", chat_rows(32, 1)),
                           ("eval.jsonl", chat_rows(6, 2))):
            body = "".join(json.dumps(r) + "\n" for r in rows)
            client.put_object(Bucket="datasets", Key=f"chat/{name}", Body=body.encode())
        yield client


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


def run_trainer(folder: Path, monkeypatch: pytest.MonkeyPatch, **sections: dict) -> int:
    from trainer.train import loop as train

    spec = {
        "name": "s3-job",
        "base_model": "s3://models/tiny-llama",
        "model": {"dtype": "float32"},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0},
        "data": {"train": "s3://datasets/chat/train-*.jsonl", "eval": "s3://datasets/chat/eval.jsonl",
                 "max_seq_len": 128},
        "training": {"max_steps": 8, "learning_rate": 2.0e-3, "per_device_batch_size": 2, "logging_steps": 2},
        "resources": {"gpu": "none"},
        "eval": {"num_samples": 1, "max_new_tokens": 4},
        **sections,
    }
    (folder / "job.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.setenv("KUBETUNE_CACHE_DIR", str(folder / "cache"))
    monkeypatch.setenv("KUBETUNE_WORK_DIR", str(folder / "work"))
    return train.main(["--spec", str(folder / "job.yaml")])


def keys(s3, bucket: str, prefix: str) -> set[str]:
    listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return {o["Key"].removeprefix(prefix) for o in listing}


def test_s3_in_s3_out_run_in_mlflow_server(s3, mlflow_url: str, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    monkeypatch.setenv("KUBETUNE_JOB_NAME", "s3-job-x7k2p")
    rc = run_trainer(tmp_path, monkeypatch, tracking={"mlflow_uri": mlflow_url, "experiment": "it-s3",
                                                      "system_metrics_interval": 0.5},
                     output={"uri": "s3://runs/s3-job/"})
    assert rc == 0
    written = keys(s3, "runs", "s3-job/")
    assert {"_SUCCESS", "adapter/adapter_model.safetensors", "adapter/adapter_config.json", "spec.yaml",
            "data_stats.json", "samples.json", "tokenizer/tokenizer.json"} <= written
    assert not any(k.startswith("mlflow") for k in written)  # the server holds the run
    marker = json.loads(s3.get_object(Bucket="runs", Key="s3-job/_SUCCESS")["Body"].read())
    assert marker["steps"] == 8 and marker["tracking_uri"] == mlflow_url
    assert any(p.name.endswith("-tiny-llama") for p in (tmp_path / "cache" / "models").iterdir())  # fetched

    client = MlflowClient(mlflow_url)
    run = client.get_run(marker["run_id"])
    assert run.info.run_name == "s3-job-x7k2p" and run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "it-s3"
    assert run.data.params["data.train"] == "s3://datasets/chat/train-*.jsonl"
    assert run.data.params["output.uri"] == "s3://runs/s3-job/"
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 5  # steps 1, 2, 4, 6, 8
    for key in ("eval_loss", "eval_perplexity", "tokens_per_second", "data/rows_used", "data/eval/rows_used"):
        assert key in run.data.metrics, key
    # MLflow's system metrics (tracking.system_metrics, on by default), sampled every 0.5 s while it trained
    for key in ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
                "system/disk_usage_percentage", "system/network_receive_megabytes"):
        assert key in run.data.metrics, (key, sorted(k for k in run.data.metrics if k.startswith("system/")))
    cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert cpu and all(0 <= m.value <= 100 for m in cpu), cpu
    assert run.data.metrics["system/system_memory_usage_megabytes"] > 0
    stats = json.loads(s3.get_object(Bucket="runs", Key="s3-job/data_stats.json")["Body"].read())["train"]
    assert run.data.metrics["data/rows_used"] == stats["rows_used"] > 0  # the rows the 8 steps trained
    assert stats["rows_read"] == stats["rows_used"] + sum(stats["bad_rows"].values()) + stats["rows_unreached"]
    adapter = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in adapter
    spec_text = Path(client.download_artifacts(run.info.run_id, "spec.yaml", str(tmp_path))).read_text()
    assert yaml.safe_load(spec_text)["base_model"] == "s3://models/tiny-llama"


def test_s3_output_without_mlflow_uri_keeps_a_local_store_and_ships_it(s3, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture) -> None:
    from mlflow import MlflowClient

    rc = run_trainer(tmp_path, monkeypatch, output={"uri": "s3://runs/local-store/"},
                     training={"max_steps": 2, "per_device_batch_size": 2, "logging_steps": 1})
    assert rc == 0
    printed = capsys.readouterr().out
    assert "local MLflow store" in printed
    written = keys(s3, "runs", "local-store/")
    assert {"_SUCCESS", "mlflow/mlflow.db"} <= written
    db = tmp_path / "copied.db"
    s3.download_file("runs", "local-store/mlflow/mlflow.db", str(db))
    marker = json.loads(s3.get_object(Bucket="runs", Key="local-store/_SUCCESS")["Body"].read())
    run = MlflowClient(f"sqlite:///{db}").get_run(marker["run_id"])
    assert run.info.status == "FINISHED" and "loss" in run.data.metrics
