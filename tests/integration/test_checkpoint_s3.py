"""Checkpoints on S3 (moto's server on loopback, through s3fs as in a pod): uploaded, named by the
manifest last, fetched and verified, pruned, a damaged one skipped."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.servers import moto_s3, s3_env
from trainer.train import checkpoint

pytestmark = pytest.mark.integration
OUTPUT = "s3://runs/job"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import boto3

    with moto_s3() as endpoint:
        for key, value in s3_env(endpoint).items():
            monkeypatch.setenv(key, value)
        client = boto3.client("s3")
        client.create_bucket(Bucket="runs")
        yield client


def save(tmp: Path, step: int, keep: int = 2) -> checkpoint.Manifest:
    local = tmp / f"local-{step}"
    (local / "global_step").mkdir(parents=True)
    (local / "adapter_model.safetensors").write_bytes(bytes([step]) * 4096)
    (local / "global_step" / "zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"z" * step)
    (local / checkpoint.STATE).write_text(json.dumps({"step": step}))
    files = checkpoint.publish(local, OUTPUT, step)
    return checkpoint.commit(OUTPUT, checkpoint.new_entry(step, 2, files, step * 8), "job-abcde", "run", {}, keep)


def keys(client: Any) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket="runs").get("Contents", []))


def test_checkpoints_on_s3_are_named_last_verified_and_pruned(s3: Any, tmp_path: Path) -> None:
    assert checkpoint.read_manifest(OUTPUT) is None
    for step in (5, 10, 15):
        manifest = save(tmp_path, step)
    assert [e.step for e in manifest.entries] == [10, 15]
    assert keys(s3) == [
        "job/checkpoints/latest.json",
        "job/checkpoints/step-000010/adapter_model.safetensors",
        "job/checkpoints/step-000010/global_step/zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "job/checkpoints/step-000010/kubetune_state.json",
        "job/checkpoints/step-000015/adapter_model.safetensors",
        "job/checkpoints/step-000015/global_step/zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "job/checkpoints/step-000015/kubetune_state.json",
    ]
    read = checkpoint.read_manifest(OUTPUT)
    assert read is not None and read.latest == manifest.latest

    entry, local = checkpoint.fetch_latest(OUTPUT, read, tmp_path / "fetched")
    assert entry.step == 15 and (local / "adapter_model.safetensors").read_bytes() == bytes([15]) * 4096

    s3.put_object(Bucket="runs", Key="job/checkpoints/step-000015/adapter_model.safetensors", Body=b"half")
    said: list[str] = []
    entry, local = checkpoint.fetch_latest(OUTPUT, read, tmp_path / "again", say=said.append)
    assert entry.step == 10 and json.loads((local / checkpoint.STATE).read_text()) == {"step": 10}
    assert "step-000015/adapter_model.safetensors: 4 bytes" in said[0]
