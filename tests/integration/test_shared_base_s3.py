"""The shared base store (trainer/export/shared_base.py) on a moto S3 server: what differs from a local store is the
upload into a writer's own prefix, the download into the cache and the sha256 check of that download. A base is
written once and then read back (not uploaded again: same ETag and LastModified); a corrupted object is refused with
an ExportError naming it and the fix; a writer that loses the race uses the winner's object and removes its own."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.servers import moto_s3, s3_env
from trainer.export import shared_base
from trainer.export.errors import ExportError

pytestmark = [pytest.mark.integration]
STORE = "s3://runs/bases"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import boto3

    with moto_s3() as endpoint:
        for key, value in s3_env(endpoint).items():
            monkeypatch.setenv(key, value)
        client = boto3.client("s3")
        client.create_bucket(Bucket="runs")
        yield client


def maker(tmp: Path, calls: list[str], text: str):
    def make() -> Path:
        calls.append(text)
        f = tmp / f"made-{len(calls)}" / "base-q8_0.gguf"
        f.parent.mkdir(parents=True)
        f.write_text(text)
        return f
    return make


def objects(client: Any) -> dict[str, tuple[str, Any]]:
    return {o["Key"]: (o["ETag"], o["LastModified"])
            for o in client.list_objects_v2(Bucket="runs", Prefix="bases/").get("Contents", [])}


def test_written_once_then_downloaded_not_uploaded_again(s3, tmp_path):
    calls: list[str] = []
    first = shared_base.ensure(STORE, "k1", "q8_0", {"a": 1}, maker(tmp_path, calls, "one"), tmp_path / "cache-1")
    assert not first.reused and first.file.startswith(f"{STORE}/k1/") and first.file.endswith("/base-q8_0.gguf")
    stored = objects(s3)
    assert sorted(stored) == sorted([first.file.removeprefix("s3://runs/"), "bases/k1/_SUCCESS"])
    marker = json.loads(s3.get_object(Bucket="runs", Key="bases/k1/_SUCCESS")["Body"].read())
    assert marker["sha256"] == first.sha256 and marker["size"] == 3 and marker["inputs"] == {"a": 1}

    again = shared_base.ensure(STORE, "k1", "q8_0", {"a": 1}, maker(tmp_path, calls, "two"), tmp_path / "cache-2")
    assert calls == ["one"] and again.reused and again.file == first.file and again.sha256 == first.sha256
    assert again.local.is_relative_to(tmp_path / "cache-2") and again.local.read_text() == "one"
    assert objects(s3) == stored  # nothing written: same keys, ETags and LastModified


@pytest.mark.parametrize("corrupt", [b"0ne", b"something else"])  # same size (the cache would keep it), another
def test_a_corrupted_base_object_is_refused(s3, tmp_path, corrupt):
    calls: list[str] = []
    first = shared_base.ensure(STORE, "k1", "q8_0", {}, maker(tmp_path, calls, "one"), tmp_path / "cache-1")
    s3.put_object(Bucket="runs", Key=first.file.removeprefix("s3://runs/"), Body=corrupt)
    with pytest.raises(ExportError, match=r"does not match its sha256 in _SUCCESS .*remove s3://runs/bases/k1/"):
        shared_base.ensure(STORE, "k1", "q8_0", {}, maker(tmp_path, calls, "two"), tmp_path / "cache-2")
    assert calls == ["one"]  # refused, not silently rebuilt over the marker
    assert not list((tmp_path / "cache-2").rglob("*.gguf"))  # the bad download is not kept for the next try


def test_a_writer_that_loses_the_race_uses_the_winners_object(s3, tmp_path):
    calls: list[str] = []

    def racing() -> Path:  # another export finishes while this one converts
        shared_base.ensure(STORE, "k1", "q8_0", {}, maker(tmp_path, calls, "winner"), tmp_path / "cache-w")
        return maker(tmp_path, calls, "loser")()

    got = shared_base.ensure(STORE, "k1", "q8_0", {}, racing, tmp_path / "cache-l")
    assert calls == ["winner", "loser"] and got.reused and got.local.read_text() == "winner"
    marker = json.loads(s3.get_object(Bucket="runs", Key="bases/k1/_SUCCESS")["Body"].read())
    assert got.file == f"{STORE}/k1/{marker['file']}"
    assert sorted(objects(s3)) == sorted([f"bases/k1/{marker['file']}", "bases/k1/_SUCCESS"])  # the loser's is gone
