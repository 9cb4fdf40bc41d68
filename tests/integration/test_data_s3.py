"""Reading training data from S3 through s3fs against a real S3 server (moto, on loopback).

The endpoint comes only from `AWS_ENDPOINT_URL_S3`, as in a pod: nothing S3-specific is passed
to the pipeline.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.integration.servers import moto_s3, s3_env
from tests.resources import tokenizer_for
from trainer.data import DataError, build_dataset
from trainer.data.sources import expand, read_records
from trainer.spec.job import JobSpec

pytestmark = pytest.mark.integration

ROW = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    import boto3

    with moto_s3() as endpoint:
        for key, value in s3_env(endpoint).items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_ENDPOINT_URL")  # only the S3-specific variable, as in a pod
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        client = boto3.client("s3")
        client.create_bucket(Bucket="datasets")
        yield client


def test_glob_of_jsonl_and_parquet_on_s3(s3: Any) -> None:
    s3.put_object(Bucket="datasets", Key="chat/train-1.jsonl", Body=(json.dumps(ROW) + "\n{broken\n").encode())
    s3.put_object(Bucket="datasets", Key="chat/train-0.jsonl", Body=(json.dumps(ROW) + "\n").encode())
    buf = io.BytesIO()
    pq.write_table(pa.table({"instruction": ["Add 2 and 3"], "output": ["5"]}), buf)
    s3.put_object(Bucket="datasets", Key="inst/part-0.parquet", Body=buf.getvalue())

    files = expand("s3://datasets/chat/train-*.jsonl")
    assert [f.uri for f in files] == ["s3://datasets/chat/train-0.jsonl", "s3://datasets/chat/train-1.jsonl"]
    recs = list(read_records(files))
    assert [r.location for r in recs] == [
        "s3://datasets/chat/train-0.jsonl:1",
        "s3://datasets/chat/train-1.jsonl:1",
        "s3://datasets/chat/train-1.jsonl:2",
    ]
    assert recs[2].error is not None and recs[2].error.reason == "invalid_json"

    tok = tokenizer_for("qwen2")
    spec = JobSpec.model_validate(
        {"name": "t", "base_model": "m", "data": {"train": "s3://datasets/chat/train-*.jsonl", "bad_rows": {"max_bad_fraction": 0.5}}}
    )
    _, stats = build_dataset(spec, tok)
    assert (stats.rows_read, stats.rows_used, stats.bad_rows) == (3, 2, {"invalid_json": 1})

    inst = JobSpec.model_validate(
        {"name": "t", "base_model": "m", "data": {"train": "s3://datasets/inst/", "format": "instruction"}}
    )
    _, stats = build_dataset(inst, tok)
    assert stats.rows_used == 1 and stats.files == ["s3://datasets/inst/part-0.parquet"]


def test_a_byte_order_mark_on_s3_is_no_bad_row(s3: Any) -> None:
    body = b"\xef\xbb\xbf" + (json.dumps(ROW) + "\r\n").encode() * 3  # as Excel or Notepad saves it
    s3.put_object(Bucket="datasets", Key="excel/train.jsonl", Body=body)
    recs = list(read_records(expand("s3://datasets/excel/train.jsonl")))
    assert [(r.line, r.row, r.error) for r in recs] == [(n, ROW, None) for n in (1, 2, 3)]
    spec = JobSpec.model_validate({"name": "t", "base_model": "m", "data": {"train": "s3://datasets/excel/train.jsonl"}})
    _, stats = build_dataset(spec, tokenizer_for("qwen2"))
    assert (stats.rows_read, stats.rows_used, stats.bad_rows) == (3, 3, {})


def test_missing_s3_data_names_the_uri(s3: Any) -> None:
    with pytest.raises(DataError, match=r"no files match 's3://datasets/nope-\*\.jsonl'"):
        expand("s3://datasets/nope-*.jsonl")
    with pytest.raises(DataError, match=r"'s3://datasets/missing\.jsonl' not found"):
        expand("s3://datasets/missing.jsonl")
