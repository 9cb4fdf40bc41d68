"""Reading rows: local paths, `s3://` URIs, globs and folders; JSON Lines and Parquet.

Everything goes through fsspec, so any fsspec protocol works. For S3 (s3fs), credentials and the
endpoint come from the standard AWS environment that botocore honours: `AWS_ACCESS_KEY_ID` /
`AWS_SECRET_ACCESS_KEY` (or a profile / IRSA), and `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`
for an S3-compatible server (MinIO, moto, Ceph). `storage_options` passes extra keyword
arguments to the filesystem (e.g. `{"endpoint_url": ..., "anon": True}`); S3 filesystems also
get the retry configuration of `trainer.storage.options`.

Rows stream: a JSONL file is read line by line and a Parquet file batch by batch, so memory
does not grow with the file. Every row carries where it came from: the 1-based line number of
a JSONL file, or the 0-based row index of a Parquet file (as pandas / pyarrow count). Blank
JSONL lines are not rows. A line that is not a JSON object is a bad row (`invalid_json`), never
a crash. No torch here: the launcher imports this module to validate data.

Positions. `scan` numbers the rows of one pass over a list of files 0, 1, 2 ... and gives each
row the `Cursor` where it starts (file, byte offset of its line or Parquet row index, line);
reading can start again at any cursor (`scan(files, cursor)`) and single rows can be read back by
their cursors (`fetch`), which is how a stream resumes without reading its files from the start.
Rows the caller does not want (`mine`) are counted but not parsed.

Stripes. Training reads a file in pieces (trainer/data/stripes.py): `jsonl_rows` reads the rows
that start in a byte range of a JSONL file (seek to the range, skip to the next line start) and
`parquet_rows` the rows of a run of row groups, one row at a time and unparsed, so that many
pieces can be open at once. A row read from the middle of a JSONL file does not know its line
number (line 0 in its cursor): `Lines` counts it when a message names the row.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import fsspec
from fsspec.utils import infer_compression

from trainer import storage
from trainer.data.errors import BadRow, DataError

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4")
PARQUET_BATCH_ROWS = 1024
LINE_BUFFER = 256 * 2**10  # local read buffer in front of a remote file, so lines are split in C
COUNT_BLOCK = 2**20  # bytes read at a time when counting lines


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


@dataclass(frozen=True)
class Cursor:
    """Where row `row` of a pass starts: `files[file]` at byte `offset` (JSONL, uncompressed bytes)
    on 1-based `line`, or at row index `offset` (Parquet). A cursor may also point at blank lines
    or the end of a file before the row: reading from it finds the row. `line` 0: not counted (a
    JSONL row read from the middle of its file, `jsonl_rows`; `Lines` counts it)."""

    row: int = 0
    file: int = 0
    offset: int = 0
    line: int = 1

    def to_list(self) -> list[int]:
        return [self.row, self.file, self.offset, self.line]

    @classmethod
    def from_list(cls, value: Sequence[int]) -> Cursor:
        row, file, offset, line = (int(v) for v in value)
        return cls(row, file, offset, line)


class Row(NamedTuple):
    at: Cursor  # where the row starts
    after: Cursor  # where the next row is looked for
    record: Record | None  # None: not wanted, not parsed


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


# -- JSON Lines ------------------------------------------------------------------------------
def _parse(src: SourceFile, line: int, raw: bytes) -> Record:
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        return Record(src.uri, line, "jsonl", error=BadRow("invalid_json", f"not UTF-8 text ({e.reason})"))
    except json.JSONDecodeError as e:
        return Record(src.uri, line, "jsonl", error=BadRow("invalid_json", f"{e.msg} at column {e.colno}"))
    if not isinstance(value, dict):
        msg = f"expected a JSON object per line, got {type(value).__name__}"
        return Record(src.uri, line, "jsonl", error=BadRow("invalid_json", msg))
    return Record(src.uri, line, "jsonl", row=value)


def compressed(src: SourceFile) -> bool:
    """A compressed file: it cannot seek, so it is read from its start."""
    return infer_compression(src.path) is not None


def _open_jsonl(src: SourceFile, block_size: int | None = None) -> io.IOBase:
    compression = infer_compression(src.path)
    f = src.fs.open(src.path, "rb", compression=compression, block_size=block_size)
    if compression is None and not isinstance(f, io.BufferedIOBase) and not hasattr(f, "f"):
        size = min(LINE_BUFFER, getattr(f, "blocksize", LINE_BUFFER))  # one remote block at most per read
        return io.BufferedReader(f, buffer_size=size)  # type: ignore[arg-type]  # fsspec files have readinto
    return f


def _jsonl(src: SourceFile, start: Cursor, mine: Callable[[int], bool]) -> Iterator[Row]:
    row, offset, line = start.row, start.offset, start.line
    with _open_jsonl(src) as f:
        if offset:
            f.seek(offset)
        for raw in f:
            at_offset, at_line = offset, line
            offset += len(raw)
            line += 1
            if not raw.strip():
                continue
            at = Cursor(row, start.file, at_offset, at_line)
            after = Cursor(row + 1, start.file, offset, line)
            yield Row(at, after, _parse(src, at_line, raw) if mine(row) else None)
            row += 1


def jsonl_rows(src: SourceFile, offset: int, line: int, end: int | None, *, align: bool = False,
               block_size: int | None = None) -> Iterator[tuple[int, int, bytes]]:
    """`(offset, line, raw line)` of each row that starts at or after byte `offset` and before
    `end` (None: the end of the file), unparsed. `align`: `offset` is the first byte of a range,
    not necessarily of a row: the line it falls into belongs to the range before (unless `offset`
    starts it), so reading starts at the next line start, and the lines are not counted (0)."""
    with _open_jsonl(src, block_size) as f:
        if align and offset > 0:
            f.seek(offset - 1)
            offset += len(f.readline()) - 1  # up to and with the newline at or after offset - 1
            line = 0
        elif offset:
            f.seek(offset)
        for raw in f:
            if end is not None and offset >= end:
                return
            at_offset, at_line = offset, line
            offset += len(raw)
            line += 1 if line else 0
            if raw.strip():
                yield at_offset, at_line, raw


def parse_jsonl(src: SourceFile, line: int, raw: bytes) -> Record:
    return _parse(src, line, raw)


class Lines:
    """Line numbers of JSONL rows by byte offset, counted only when asked (a bad row's location),
    from the nearest offset counted before (each file's start is line 1)."""

    def __init__(self, files: Sequence[SourceFile]):
        self.files = files
        self.known: dict[int, dict[int, int]] = {}  # file -> {offset: line of the row starting there}

    def line(self, file: int, offset: int) -> int:
        known = self.known.setdefault(file, {0: 1})
        start = max(o for o in known if o <= offset)
        line = known[start]
        if start < offset:
            src = self.files[file]
            with _open_jsonl(src) as f:
                f.seek(start)
                left = offset - start
                while left > 0:
                    block = f.read(min(COUNT_BLOCK, left))
                    if not block:
                        break
                    line += block.count(b"\n")
                    left -= len(block)
            known[offset] = line
        return line


# -- Parquet ---------------------------------------------------------------------------------
def _groups(pf: Any) -> list[int]:
    """First row index of each row group, plus the total."""
    starts = [0]
    for i in range(pf.metadata.num_row_groups):
        starts.append(starts[-1] + pf.metadata.row_group(i).num_rows)
    return starts


def _group_of(starts: list[int], index: int) -> int:
    """The row group holding row `index` (len(starts) - 1 past the end)."""
    return next((g for g in range(len(starts) - 1) if index < starts[g + 1]), len(starts) - 1)


def _parquet(src: SourceFile, start: Cursor, mine: Callable[[int], bool]) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with src.fs.open(src.path, "rb") as f:
        pf = pq.ParquetFile(f)
        starts = _groups(pf)
        first = _group_of(starts, start.offset)
        groups = list(range(first, len(starts) - 1))
        if not groups:
            return
        index = starts[first]  # file row index of the batch's first row
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=groups):
            skip = max(0, start.offset - index)
            row = start.row + index + skip - start.offset  # the pass's number of the batch's row `skip`
            wanted = [i for i in range(skip, batch.num_rows) if mine(row + i - skip)]
            rows = batch.take(pa.array(wanted, type=pa.int64())).to_pylist() if wanted else []
            got = dict(zip(wanted, rows, strict=True))
            for i in range(skip, batch.num_rows):
                n = row + i - skip
                rec = Record(src.uri, index + i, "parquet", row=got[i]) if i in got else None
                yield Row(Cursor(n, start.file, index + i, 0), Cursor(n + 1, start.file, index + i + 1, 0), rec)
            index += batch.num_rows


def parquet_rows(src: SourceFile, part: int, parts: int, index: int | None = None, *, turn: int = 0,
                 size: int = 0, buffer_size: int = 0) -> Iterator[tuple[int, int, Any]]:
    """`(row index, bytes left, take)` of each row of part `part` of `parts` of a Parquet file (its
    row groups cut into `parts` runs of consecutive groups), the run turned to start at its group
    `turn` mod its length (then wrapping round to its first group), from row `index` on (None: the
    turned run's first row). `take()` reads the row (a dict). Bytes left: the part's rows from this
    one on, times the file's `size` per row (at least 1). One batch of PARQUET_BATCH_ROWS rows is
    held at a time; `buffer_size` > 0 streams each column chunk instead of reading it whole."""
    import pyarrow.parquet as pq

    with src.fs.open(src.path, "rb") as f:
        pf = pq.ParquetFile(f, pre_buffer=buffer_size <= 0, buffer_size=buffer_size)
        starts = _groups(pf)
        count = len(starts) - 1
        first, last = part * count // parts, (part + 1) * count // parts
        if first == last:
            return
        pivot = first + turn % (last - first)
        runs = [(pivot, last), (first, pivot)]  # groups in reading order: from the pivot, then the ones before it
        if index is not None and index < starts[pivot]:
            runs = [(_group_of(starts, index), pivot)]
        elif index is not None:
            runs[0] = (_group_of(starts, index), last)
        runs = [(a, b) for a, b in runs if a < b]
        if not runs:
            return
        left = sum(starts[b] - starts[a] for a, b in runs) - (0 if index is None else index - starts[runs[0][0]])
        per_row = max(1, size // max(1, starts[-1]))
        skip = index or 0  # the first run resumes at row `index`
        for begin, end in runs:
            at = starts[begin]  # file row index of the batch's first row
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=list(range(begin, end))):
                for i in range(max(0, skip - at), batch.num_rows):
                    yield at + i, left * per_row, lambda rows=batch, i=i: rows.slice(i, 1).to_pylist()[0]
                    left -= 1
                at += batch.num_rows
            skip = 0


def parquet_record(src: SourceFile, index: int, row: dict[str, Any]) -> Record:
    return Record(src.uri, index, "parquet", row=row)


# -- reading ---------------------------------------------------------------------------------
def read_error(src: SourceFile, e: Exception, field: str) -> DataError:
    return DataError(f"{field}: cannot read {src.uri}: {storage.describe_error(e)}")


def scan(
    files: Sequence[SourceFile],
    start: Cursor = Cursor(),
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
            for item in _jsonl(src, cursor, mine) if src.kind == "jsonl" else _parquet(src, cursor, mine):
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
    import pyarrow.parquet as pq

    out: dict[Cursor, Record] = {}
    by_file: dict[int, list[Cursor]] = {}
    for c in cursors:
        by_file.setdefault(c.file, []).append(c)
    for index, wanted in sorted(by_file.items()):
        src = files[index]
        try:
            if src.kind == "jsonl":
                with _open_jsonl(src) as f:
                    for c in sorted(set(wanted), key=lambda c: c.offset):
                        f.seek(c.offset)
                        out[c] = _parse(src, c.line, f.readline())
            else:
                with src.fs.open(src.path, "rb") as f:
                    pf = pq.ParquetFile(f)
                    starts = _groups(pf)
                    group, table = -1, None
                    for c in sorted(set(wanted), key=lambda c: c.offset):
                        if _group_of(starts, c.offset) != group:
                            group = _group_of(starts, c.offset)
                            table = pf.read_row_group(group)
                        assert table is not None
                        row = table.slice(c.offset - starts[group], 1).to_pylist()[0]
                        out[c] = Record(src.uri, c.offset, "parquet", row=row)
        except (OSError, ValueError, IndexError) as e:
            raise read_error(src, e, field) from None
    return [out[c] for c in cursors]
