"""What reading data passes around: `SourceFile` (one file to read), `Record` (one row of it, or
the BadRow that reading it produced), `Cursor` (where a row of a pass starts) and `Row` (a row of
a pass with its cursors); and what a file's name says about reading it (`file_kind`, `compressed`).

No torch here: the launcher reads data through these (trainer/data/sources.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import fsspec
from fsspec.utils import infer_compression

from trainer.data.errors import BadRow

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
PARQUET_SUFFIXES = (".parquet", ".pq")
COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4")


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


def compressed(src: SourceFile) -> bool:
    """A compressed file: it cannot seek, so it is read from its start."""
    return infer_compression(src.path) is not None
