"""Reading rows: local paths, `s3://` URIs, globs and folders; JSON Lines and Parquet.

Everything goes through fsspec, so any fsspec protocol works. For S3 (s3fs), credentials and the
endpoint come from the standard AWS environment that botocore honours: `AWS_ACCESS_KEY_ID` /
`AWS_SECRET_ACCESS_KEY` (or a profile / IRSA), and `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`
for an S3-compatible server (MinIO, moto, Ceph). `storage_options` passes extra keyword
arguments to the filesystem (e.g. `{"endpoint_url": ..., "anon": True}`); S3 filesystems also
get the retry configuration of `trainer.storage.options`.

This module resolves what a data field names into files (`expand`) and reads rows from them
(`scan`, `read_records`, `fetch`); the types they pass around are in trainer/data/records.py, the
readers of each format in trainer/data/jsonl.py and trainer/data/parquet.py.

Rows stream: a JSONL file is read line by line and a Parquet file batch by batch, so memory
does not grow with the file. Every row carries where it came from: the 1-based line number of
a JSONL file, or the 0-based row index of a Parquet file (as pandas / pyarrow count). Blank
JSONL lines are not rows. A line that is not a JSON object is a bad row (`invalid_json`), never
a crash; a UTF-8 byte-order mark before a line's JSON is accepted. No torch here: the launcher
imports this module to validate data.

Positions. `scan` numbers the rows of one pass over a list of files 0, 1, 2 ... and gives each
row the `Cursor` where it starts (file, byte offset of its line or Parquet row index, line);
reading can start again at any cursor (`scan(files, cursor)`) and single rows can be read back by
their cursors (`fetch`), which is how a stream resumes without reading its files from the start.
Rows the caller does not want (`mine`) are counted but not parsed.

Stripes. Training reads a file in pieces (trainer/data/stripes.py): `jsonl.jsonl_rows` reads the
rows that start in a byte range of a JSONL file (seek to the range, skip to the next line start)
and `parquet.parquet_rows` the rows of a run of row groups, one row at a time and unparsed, so
that many pieces can be open at once. A row read from the middle of a JSONL file does not know
its line number (line 0 in its cursor): `jsonl.Lines` counts it when a message names the row.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import fsspec

from trainer import storage
from trainer.data.errors import DataError
from trainer.data.jsonl import fetch_jsonl, scan_jsonl
from trainer.data.parquet import fetch_parquet, scan_parquet
from trainer.data.records import Cursor, Record, Row, SourceFile, file_kind

START = Cursor()  # the first row of a pass


def _has_magic(path: str) -> bool:
    return any(c in path for c in "*?[")


def _display(fs: fsspec.AbstractFileSystem, path: str) -> str:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return path if protocol in ("file", "local") else fs.unstrip_protocol(path)


def _absolute(uri: str, base_dir: str | os.PathLike[str] | None) -> str:
    if base_dir is None or "://" in uri or os.path.isabs(os.path.expanduser(uri)):
        return os.path.expanduser(uri)
    return os.path.join(os.fspath(base_dir), uri)


def _missing(fs: fsspec.AbstractFileSystem, path: str, raw: str, field: str) -> DataError:
    """Why `raw` is neither a file nor a folder: the storage's own answer when it has one."""
    try:
        fs.info(path)
    except FileNotFoundError as e:
        if storage.describe_error(e) != "not found (404)":
            return DataError(f"{field}: {raw}: {storage.describe_error(e)}")
    except OSError as e:
        return DataError(f"{field}: {raw}: {storage.describe_error(e)}")
    return DataError(f"{field}: {raw!r} not found; give an existing file, folder, glob or s3:// URI")


def _paths(fs: fsspec.AbstractFileSystem, path: str, raw: str, field: str) -> list[str]:
    """The files one URI names (a glob, a folder or a file), sorted; DataError when there are none."""
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
            raise _missing(fs, path, raw, field)
    except OSError as e:  # PermissionError, FileNotFoundError of a bucket, retries exhausted
        raise DataError(
            f"{field}: cannot list {raw}: {storage.describe_error(e)} (check the credentials / endpoint for it)"
        ) from None
    return paths


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
            fs, path = storage.filesystem(uri, storage_options)
        except (ImportError, ValueError) as e:
            raise DataError(f"{field}: cannot open {raw!r}: {e}") from None
        for p in _paths(fs, path, raw, field):
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


def read_error(src: SourceFile, e: Exception, field: str) -> DataError:
    return DataError(f"{field}: cannot read {src.uri}: {storage.describe_error(e)}")


def scan(
    files: Sequence[SourceFile],
    start: Cursor = START,
    mine: Callable[[int], bool] = lambda row: True,
    *,
    field: str = "data.train",
) -> Iterator[Row]:
    """Every row of every file from `start` on, in order, numbered across the files; parsed only
    where `mine(row)`. Unreadable files raise DataError naming `field`, the URI and the cause."""
    cursor = start
    for index in range(start.file, len(files)):
        src = files[index]
        if index != start.file:
            cursor = Cursor(cursor.row, index, 0, 1)
        try:
            for item in scan_jsonl(src, cursor, mine) if src.kind == "jsonl" else scan_parquet(src, cursor, mine):
                cursor = item.after
                yield item
        except (OSError, ValueError) as e:  # unreadable file, broken Parquet (ArrowInvalid), S3 errors
            raise read_error(src, e, field) from None


def read_records(files: Sequence[SourceFile], field: str = "data.train") -> Iterator[Record]:
    """Every row of every file, in order."""
    for item in scan(files, field=field):
        assert item.record is not None
        yield item.record


def fetch(files: Sequence[SourceFile], cursors: Sequence[Cursor], *, field: str = "data.train") -> list[Record]:
    """The rows that start at `cursors` (as `scan` gave them), read directly, in the given order."""
    out: dict[Cursor, Record] = {}
    by_file: dict[int, list[Cursor]] = {}
    for c in cursors:
        by_file.setdefault(c.file, []).append(c)
    for index, wanted in sorted(by_file.items()):
        src = files[index]
        try:
            out |= fetch_jsonl(src, wanted) if src.kind == "jsonl" else fetch_parquet(src, wanted)
        except (OSError, ValueError, IndexError) as e:
            raise read_error(src, e, field) from None
    return [out[c] for c in cursors]
