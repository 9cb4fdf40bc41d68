"""S3 faults between the trainer and a real S3 server (moto), injected by a proxy on loopback.

Transient faults — every 5th request answered 503 SlowDown, a connection cut in the middle of a
body, a request that stalls past the read timeout, a connection dropped before the answer — are
retried (botocore's adaptive retries, s3fs fetching a broken range again): the stream yields
exactly the rows of a clean run, and files written through trainer/storage.py arrive whole. Permanent faults (403, a missing bucket)
fail at once — the proxy sees the request a single time — with the URI and the cause.
"""

from __future__ import annotations

import gzip
import io
import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration.fault_proxy import FaultProxy
from tests.integration.servers import moto_s3, s3_env
from tests.resources import tokenizer_for
from trainer import storage
from trainer.data import DataError
from trainer.data.sources import expand
from trainer.data.stream import TrainStream
from trainer.spec.job import JobSpec

pytestmark = pytest.mark.integration

# Small ranged reads, so one file takes several GETs and a cut can fall past its first range;
# a short read timeout, so a stalled request is retried within the test.
OPTIONS = {"default_block_size": 32 * 1024, "config_kwargs": {"read_timeout": 2}}


def row(i: int) -> dict[str, Any]:
    filler = " ".join(f"w{(i * j) % 97}" for j in range(60))
    return {"messages": [{"role": "user", "content": f"question {i}: {filler}"},
                         {"role": "assistant", "content": f"answer {i}"}]}


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    import boto3
    import s3fs

    with moto_s3() as endpoint:
        # moto keeps its buckets per process: start from none, whatever a test before left
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=10)
        for key, value in s3_env(endpoint).items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        s3fs.S3FileSystem.clear_instance_cache()
        client = boto3.client("s3")
        client.create_bucket(Bucket="datasets")
        client.create_bucket(Bucket="runs")
        plain = "".join(json.dumps(row(i)) + "\n" for i in range(0, 1500))
        client.put_object(Bucket="datasets", Key="chat/a.jsonl", Body=plain.encode())
        packed = "".join(json.dumps(row(i)) + "\n" for i in range(1500, 1700))
        client.put_object(Bucket="datasets", Key="chat/b.jsonl.gz", Body=gzip.compress(packed.encode()))
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist([row(i) for i in range(1700, 1800)]), buf, row_group_size=25)
        client.put_object(Bucket="datasets", Key="chat/c.parquet", Body=buf.getvalue())
        try:
            yield client, endpoint
        finally:
            s3fs.S3FileSystem.clear_instance_cache()


@contextmanager
def through(proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """Point every S3 client made inside at the proxy (as AWS_ENDPOINT_URL_S3 does in a pod)."""
    import s3fs

    with proxy.running(), monkeypatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", proxy.url)
        mp.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
        s3fs.S3FileSystem.clear_instance_cache()  # an instance made before has the server's endpoint
        try:
            yield proxy
        finally:
            s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def tok() -> Any:
    return tokenizer_for("qwen2")


def retried(proxy: FaultProxy, kind: str) -> bool:
    """Every request that got fault `kind` was asked again at once (before a stalled answer came)."""
    asked = [(m, p) for m, p, _ in proxy.log]
    hits = [i for i, (_, _, what) in enumerate(proxy.log) if what == kind]
    return bool(hits) and all(i + 1 < len(asked) and asked[i + 1] == asked[i] for i in hits)


def read_all(tok: Any, train: str = "s3://datasets/chat/") -> list[dict[str, list[int]]]:
    spec = JobSpec.model_validate({"name": "t", "base_model": "m", "training": {"max_steps": 1},
                                   "data": {"train": train, "max_seq_len": 1024}})
    return list(TrainStream(spec, tok, storage_options=OPTIONS, passes=1))


def test_transient_faults_are_retried_and_the_rows_are_those_of_a_clean_run(
        s3: tuple[Any, str], tok: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    _, endpoint = s3
    clean = read_all(tok)
    assert sum(len(r["input_ids"]) for r in clean) > 100_000
    proxy = FaultProxy(endpoint, slowdown_every=5, cut="chat/a.jsonl", cut_after=1, stall="chat/c.parquet")
    with through(proxy, monkeypatch):
        faulty = read_all(tok)
        config = expand("s3://datasets/chat/", OPTIONS)[0].fs.s3.meta.config  # botocore's own retries do it
        assert config.retries == {"mode": "adaptive", "total_max_attempts": storage.S3_RETRIES["max_attempts"] + 1}
        assert config.read_timeout == 2 and config.connect_timeout == storage.S3_TIMEOUTS["connect_timeout"]
    assert faulty == clean
    assert proxy.faults("slowdown") >= 3 and proxy.faults("cut") == 1 and proxy.faults("stalled") == 1
    assert retried(proxy, "slowdown") and retried(proxy, "cut") and retried(proxy, "stalled")
    assert proxy.requests("GET", "chat/a.jsonl") >= 3  # several ranges, the cut one fetched again


def test_writes_through_storage_survive_slowdowns_and_dropped_connections(
        s3: tuple[Any, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    client, endpoint = s3
    local = tmp_path / "checkpoint"
    (local / "adapter").mkdir(parents=True)
    files = {"adapter/weights.bin": bytes(range(256)) * 4000, "state.json": b'{"step": 3}', "notes.txt": b"x" * 10}
    for rel, data in files.items():
        (local / rel).write_bytes(data)
    proxy = FaultProxy(endpoint, slowdown_every=2, drop="runs/ckpt/state.json")
    with through(proxy, monkeypatch):
        written = storage.publish_dir(local, "s3://runs/ckpt/")
        storage.write_text("s3://runs/ckpt/latest.json", '{"latest": "step-3"}')
        assert storage.read_text("s3://runs/ckpt/latest.json") == '{"latest": "step-3"}'
    assert sorted(written) == sorted(files)
    for rel, data in files.items():
        assert client.get_object(Bucket="runs", Key=f"ckpt/{rel}")["Body"].read() == data
    assert proxy.faults("slowdown") >= 3 and proxy.faults("dropped") == 1
    assert retried(proxy, "slowdown") and retried(proxy, "dropped")


def test_access_denied_fails_at_once_naming_the_uri(s3: tuple[Any, str], tok: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _, endpoint = s3
    proxy = FaultProxy(endpoint, deny=("chat/b.jsonl.gz",))
    with through(proxy, monkeypatch), pytest.raises(DataError) as e:
        read_all(tok)
    assert str(e.value).startswith("data.train: cannot read s3://datasets/chat/b.jsonl.gz: access denied (403)")
    assert proxy.requests("GET", "chat/b.jsonl.gz") == 1  # not retried

    writer = FaultProxy(endpoint, deny=("runs/denied/",), deny_methods=("PUT",))
    with through(writer, monkeypatch), pytest.raises(PermissionError):
        storage.write_text("s3://runs/denied/_SUCCESS", "{}")
    assert writer.requests("PUT", "runs/denied/") == 1


def test_a_missing_bucket_is_named(s3: tuple[Any, str], monkeypatch: pytest.MonkeyPatch) -> None:
    _, endpoint = s3
    proxy = FaultProxy(endpoint)
    with through(proxy, monkeypatch), pytest.raises(DataError) as e:
        expand("s3://no-such-bucket/train.jsonl", OPTIONS)
    assert "data.train: s3://no-such-bucket/train.jsonl: no such bucket (NoSuchBucket)" in str(e.value)
    asked = [(m, p) for m, p, _ in proxy.log]
    assert all(a != b for a, b in zip(asked, asked[1:], strict=False))  # no request asked again: not retried


def test_retry_settings_in_the_environment_replace_kubetunes(s3: tuple[Any, str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import s3fs

    monkeypatch.setenv("AWS_RETRY_MODE", "standard")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "3")
    s3fs.S3FileSystem.clear_instance_cache()
    config = expand("s3://datasets/chat/a.jsonl")[0].fs.s3.meta.config
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}
    assert storage.options("/local/path") == {} and storage.options("s3://b/k", {"anon": True})["anon"] is True
