"""Two exports of one base racing to register it (seed 000's eight matrix cells export at once): both find no
version tagged with the base's key, both register one; `Registry.settle` leaves one version, the oldest, which both
then use. Against a real MLflow store (sqlite, as a job without `tracking.mlflow_uri` has)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_racing_registrations_of_one_base_settle_on_the_oldest(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from trainer.export.register import Registry

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("bases", artifact_location=(tmp_path / "artifacts").as_uri())
    gguf = tmp_path / "base-q8_0.gguf"
    gguf.write_bytes(b"GGUF" + bytes(64))
    racers = [Registry(uri, "base-1a2b3c4d") for _ in range(2)]
    racers[0].ensure_model("shared bases")
    assert all(r.find("kubetune.base.key", "k1") is None for r in racers)  # neither sees the other's yet
    tags = {"kubetune.kind": "base", "kubetune.base.key": "k1"}
    mine = [r.register_file("base-q8_0", gguf, None, client.create_run(exp).info.run_id, tags) for r in racers]
    assert [str(m.version) for m in mine] == ["1", "2"]
    other = racers[0].register_file("base-q8_0", gguf, None, client.create_run(exp).info.run_id,
                                    tags | {"kubetune.base.key": "k2"})  # another base: untouched

    settled = [r.settle("kubetune.base.key", "k1", m) for r, m in zip(racers, mine, strict=True)]
    assert [(str(s.version), s.reused) for s in settled] == [("1", False), ("1", True)]
    assert settled[1].source == mine[0].source
    left = {str(mv.version): mv.tags["kubetune.base.key"] for mv in client.search_model_versions("name = 'base-1a2b3c4d'")}
    assert left == {"1": "k1", str(other.version): "k2"}
