"""Reading rows: local paths, `s3://` URIs, globs and folders; JSON Lines and Parquet.

Everything goes through fsspec, so any fsspec protocol works. For S3 (s3fs), credentials and the
endpoint come from the standard AWS environment that botocore honours: `AWS_ACCESS_KEY_ID` /
`AWS_SECRET_ACCESS_KEY` (or a profile / IRSA), and `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`
for an S3-compatible server (MinIO, moto, Ceph). `storage_options` passes extra keyword
arguments to the filesystem (e.g. `{"endpoint_url": ..., "anon": True}`).

Rows stream: a JSONL file is read line by line and a Parquet file batch by batch, so memory
does not grow with the file. Every row carries where it came from: the 1-based line number of
a JSONL file, or the 0-based row index of a Parquet file (as pandas / pyarrow count). Blank
JSONL lines are not rows. A line that is not a JSON object is a bad row (`invalid_json`), never
a crash. No torch here: the launcher imports this module to validate data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
from fsspec.core import url_to_fs
from fsspec.utils import infer_compression

from trainer.data.errors import BadRow, DataError

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4")
PARQUET_BATCH_ROWS = 1024


@dataclass(frozen=True)
class SourceFile:
    uri: str  # as shown to users: a local path or protocol://...
    fs: fsspec.AbstractFileSystem
    path: str  # the filesystem's own path
    kind: str  # "jsonl" | "parquet"


@dataclass(frozen=True)
class Record:
    """One row of one file: a dict, or the BadRow that reading it produced."""

    uri: str
    line: int  # JSONL: 1-based line number; Parquet: 0-based row index
    kind: str
    row: dict[str, Any] | None = None
    error: BadRow | None = None

    @property
    def location(self) -> str:
        return f"{self.uri}:row {self.line}" if self.kind == "parquet" else f"{self.uri}:{self.line}"


def file_kind(uri: str) -> str | None:
    name = uri.lower()
    for comp in COMPRESSION_SUFFIXES:
        name = name.removesuffix(comp)
    if name.endswith(JSONL_SUFFIXES):
        return "jsonl"
    if name.endswith(PARQUET_SUFFIXES):
        return "parquet"
    return None


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _display(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def _absolute(uri: str, base_dir: str | os.PathLike[str] | None) -> str:
    if base_dir is None or "://" in uri or os.path.isabs(os.path.expanduser(uri)):
        return os.path.expanduser(uri)
    return os.path.join(os.fspath(base_dir), uri)


def expand(
    uris: str | Sequence[str],
    storage_options: dict[str, Any] | None = None,
    base_dir: str | os.PathLike[str] | None = None,
    field: str = "data.train",
) -> list[SourceFile]:
    """Resolve URIs, globs and folders to a sorted list of files (duplicates removed).

    Relative local paths are taken against `base_dir` (the spec's folder) when given. Raises
    DataError naming the URI when nothing matches or a file has an unknown extension.
    """
    items = [uris] if isinstance(uris, str) else list(uris)
    if not items:
        raise DataError(f"{field}: no data given: name at least one file, glob or s3:// URI")
    out: list[SourceFile] = []
    seen: set[str] = set()
    for raw in items:
        uri = _absolute(raw, base_dir)
        try:
            fs, path = url_to_fs(uri, **(storage_options or {}))
        except (ImportError, ValueError) as e:
            raise DataError(f"{field}: cannot open {raw!r}: {e}") from None
        try:
            if _has_magic(path):
                paths = sorted(p for p in fs.glob(path) if fs.isfile(p))
                if not paths:
                    raise DataError(f"{field}: no files match {raw!r}; check the pattern and that the files exist")
            elif fs.isdir(path):
                paths = sorted(p for p in fs.find(path) if file_kind(p))
                if not paths:
                    raise DataError(f"{field}: the folder {raw!r} holds no .jsonl or .parquet files")
            elif fs.isfile(path):
                paths = [path]
            else:
                raise DataError(f"{field}: {raw!r} not found; give an existing file, folder, glob or s3:// URI")
        except (PermissionError, OSError) as e:
            raise DataError(f"{field}: cannot list {raw!r}: {e} (check the credentials / endpoint for it)") from None
        for p in paths:
            shown = _display(fs, p)
            kind = file_kind(p)
            if kind is None:
                raise DataError(
                    f"{field}: cannot tell the format of {shown!r}: name JSON Lines files .jsonl (or .json, "
                    "optionally .gz) and Parquet files .parquet"
                )
            if shown not in seen:
                seen.add(shown)
                out.append(SourceFile(shown, fs, p, kind))
    return out


def _jsonl(src: SourceFile) -> Iterator[Record]:
    with src.fs.open(src.path, "rb", compression=infer_compression(src.path)) as f:
        for n, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield Record(src.uri, n, "jsonl", error=BadRow("invalid_json", f"not UTF-8 text ({e.reason})"))
                continue
            except json.JSONDecodeError as e:
                yield Record(src.uri, n, "jsonl", error=BadRow("invalid_json", f"{e.msg} at column {e.colno}"))
                continue
            if not isinstance(value, dict):
                msg = f"expected a JSON object per line, got {type(value).__name__}"
                yield Record(src.uri, n, "jsonl", error=BadRow("invalid_json", msg))
                continue
            yield Record(src.uri, n, "jsonl", row=value)


def _parquet(src: SourceFile) -> Iterator[Record]:
    import pyarrow.parquet as pq

    with src.fs.open(src.path, "rb") as f:
        index = 0
        for batch in pq.ParquetFile(f).iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                yield Record(src.uri, index, "parquet", row=row)
                index += 1


def read_records(files: Sequence[SourceFile]) -> Iterator[Record]:
    """Every row of every file, in order."""
    for src in files:
        try:
            yield from _jsonl(src) if src.kind == "jsonl" else _parquet(src)
        except (OSError, ValueError) as e:  # unreadable file, broken Parquet (ArrowInvalid)
            raise DataError(f"cannot read {src.uri}: {e}") from None
