"""`adapter.init_from` from the stores a parent lives in (trainer/model/init_from.py): a job's output on S3 (moto's
server), and versions of a real `mlflow server` registry as the export registers them (trainer/export/register.py),
or of the job's local store; the run a job starts records its objective and parent (trainer/tracking/tracker.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.servers import mlflow_server, moto_s3, s3_env
from tests.unit.test_init_from import job_output, make_spec, write_adapter
from trainer.export import register
from trainer.model import init_from
from trainer.model.errors import ModelError
from trainer.spec.io import spec_from_dict

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KUBETUNE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # nothing MLflow defaults to lands in the checkout
    return tmp_path / "cache"


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


# -- s3:// -----------------------------------------------------------------------------------------
@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import s3fs

    with moto_s3() as endpoint:
        for key, value in s3_env(endpoint).items():
            monkeypatch.setenv(key, value)
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint}, key="testing", secret="testing")
        fs.mkdir("runs")
        yield fs


def test_a_job_output_on_s3_is_fetched_and_fetched_again_when_it_changes(s3: Any, tmp_path: Path) -> None:
    local = job_output(tmp_path / "sft", run_id="run-on-s3")
    s3.put(str(local) + "/", "runs/sft/", recursive=True)
    parent = init_from.resolve(make_spec(init_from="s3://runs/sft"))
    assert parent is not None and files(parent.folder) == files(local / "adapter")
    assert (parent.resolved, parent.run_id, parent.base_model) == ("s3://runs/sft/adapter", "run-on-s3", "base")
    s3.pipe("runs/sft/adapter/adapter_model.safetensors", b"retrained")  # the parent job ran again
    again = init_from.resolve(make_spec(init_from="s3://runs/sft/adapter/"))
    assert again is not None and (again.folder / "adapter_model.safetensors").read_bytes() == b"retrained"
    assert again.run_id == "run-on-s3"  # its adapter/ folder: the job's _SUCCESS is next to it
    with pytest.raises(ModelError, match="no adapter_config.json in s3://runs/nothing nor in s3://runs/nothing/adapter"):
        init_from.resolve(make_spec(init_from="s3://runs/nothing"))


# -- models:/ ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


def exported(uri: str, name: str, adapter: Path | None, kinds: tuple[str, ...] = ("q8_0",)) -> tuple[str, Any]:
    """A training run with its adapter artifacts (as training logs them) and, as the export registers them, an
    adapter version (when `adapter` is given) and versions of other kinds; -> (run id, client)."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name) or client.get_experiment(client.create_experiment(name))
    run_id = client.create_run(exp.experiment_id).info.run_id
    registry = register.Registry(uri, name)
    registry.ensure_model("test")
    lineage = register.Lineage(run_id, "hash", "data", "base", "0.3.36")
    if adapter is not None:
        registry.register(register.Item("adapter", adapter, "sha-adapter", {}), lineage)
    source = f"{client.get_run(run_id).info.artifact_uri}/export/gguf"
    for kind in kinds:  # a GGUF version stands in: its kind tag and run are what resolution reads
        client.create_model_version(name, source=source, run_id=run_id, tags=lineage.tags() | {"kubetune.kind": kind})
    return run_id, client


def registry_spec(uri: str, given: str, base: str = "base") -> Any:
    return spec_from_dict({"name": "dpo", "base_model": base, "data": {"train": "unused.jsonl"},
                           "resources": {"gpu": "none"}, "tracking": {"mlflow_uri": uri},
                           "adapter": {"init_from": given}})


def test_registered_adapter_versions_resolve_by_version_and_by_an_alias_on_a_gguf(mlflow: str, tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path / "adapter")
    run_id, client = exported(mlflow, "sft", adapter)
    versions = {v.tags["kubetune.kind"]: v.version for v in client.search_model_versions("name = 'sft'")}
    client.set_registered_model_alias("sft", "candidate", versions["q8_0"])  # the export's alias: a GGUF
    for given in (f"models:/sft/{versions['adapter']}", "models:/sft@candidate"):
        parent = init_from.resolve(registry_spec(mlflow, given))
        assert parent is not None and files(parent.folder) == files(adapter)
        assert (parent.resolved, parent.run_id, parent.base_model) == (f"models:/sft/{versions['adapter']}", run_id,
                                                                      "base")
    with pytest.raises(ModelError) as e:  # the registry's tags name the parent's base model
        init_from.resolve(registry_spec(mlflow, "models:/sft@candidate", base="other/model"))
    assert "base_model: the parent was trained on base, this spec's is other/model" in str(e.value)
    with pytest.raises(ModelError, match="models:/sft/99: the registry at .* answered"):
        init_from.resolve(registry_spec(mlflow, "models:/sft/99"))


def test_a_gguf_version_without_an_adapter_version_uses_its_runs_adapter_artifacts(mlflow: str, tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path / "adapter")
    run_id, client = exported(mlflow, "no-adapter-version", None)  # export.register.register_adapter: false
    client.log_artifacts(run_id, str(adapter), "adapter")  # what training logs (trainer/train/finish.py)
    parent = init_from.resolve(registry_spec(mlflow, "models:/no-adapter-version/1"))
    assert parent is not None and files(parent.folder) == files(adapter)
    assert parent.resolved == f"runs:/{run_id}/adapter" and parent.run_id == run_id
    exported(mlflow, "nothing", None)
    with pytest.raises(ModelError, match="version 1 of nothing is a q8_0 with no adapter registered or logged"):
        init_from.resolve(registry_spec(mlflow, "models:/nothing/1"))


def test_the_jobs_local_store_is_the_registry_without_a_tracking_uri(tmp_path: Path) -> None:
    from trainer.tracking.tracker import Tracker

    spec = make_spec(init_from="models:/local-sft/1")
    output = tmp_path / "runs" / "dpo"  # output.uri unset: runs/<name> next to the spec
    Tracker(make_spec(), output, active=True).end()  # how a local job tracks: <output>/mlflow.db
    uri = f"sqlite:///{(output / 'mlflow.db').resolve()}"
    adapter = write_adapter(tmp_path / "adapter")
    exported(uri, "local-sft", adapter, kinds=())
    parent = init_from.resolve(spec, base_dir=tmp_path)
    assert parent is not None and files(parent.folder) == files(adapter) and parent.resolved == "models:/local-sft/1"


def test_the_run_records_its_objective_and_parent(mlflow: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from trainer.tracking.tracker import Tracker

    job_output(tmp_path / "sft")
    spec = spec_from_dict({"name": "dpo", "base_model": "base", "data": {"train": "unused.jsonl"},
                           "resources": {"gpu": "none"}, "tracking": {"mlflow_uri": mlflow, "experiment": "lineage"},
                           "adapter": {"init_from": "sft"}})
    tracker = Tracker(spec, tmp_path / "store", active=True)
    parent = init_from.resolve(spec, base_dir=tmp_path)
    assert parent is not None
    tracker.set_tags(parent.tags())
    tracker.end()
    tags = MlflowClient(mlflow).get_run(tracker.run_id).data.tags
    assert tags["kubetune.objective"] == spec.training.objective == "sft"
    assert tags["kubetune.parent"] == "sft" and tags["kubetune.parent.run_id"] == "run-sft-1"
    assert tags["kubetune.parent.resolved"] == str(tmp_path / "sft" / "adapter")
    assert register.parent_tags(tags, spec.adapter.init_from) == parent.tags()  # what the export's versions carry
