"""Reading JSON Lines files: parsing a line into a Record, the rows of one file from a cursor on
(`scan_jsonl`), the rows that start in a byte range (`jsonl_rows`, for stripes), single rows read
back by their cursors (`fetch_jsonl`), and line numbers counted only when a message needs them
(`Lines`, `Where`).

A line is read as bytes and decoded as UTF-8. A UTF-8 byte-order mark at the start of a line (a
file saved by Excel or Notepad, or such files joined together) is not part of the row: the row
is the JSON after it, and a line that holds only the mark is blank. Blank lines are not rows; a
line that is not a JSON object is a bad row (`invalid_json`), never a crash. Cursor offsets
count the file's bytes, the mark included. No torch here.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator, Sequence

from fsspec.utils import infer_compression

from trainer.data.errors import BadRow
from trainer.data.records import Cursor, Record, Row, SourceFile

BOM = b"\xef\xbb\xbf"  # the UTF-8 byte-order mark
LINE_BUFFER = 256 * 2**10  # local read buffer in front of a remote file, so lines are split in C
COUNT_BLOCK = 2**20  # bytes read at a time when counting lines


def _blank(raw: bytes) -> bool:
    """A line that is no row: whitespace only (after a byte-order mark)."""
    return not raw.removeprefix(BOM).strip()


def parse_jsonl(src: SourceFile, line: int, raw: bytes) -> Record:
    try:
        value = json.loads(raw.removeprefix(BOM).decode("utf-8"))
    except UnicodeDecodeError as e:
        return Record(src.uri, line, "jsonl", error=BadRow("invalid_json", f"not UTF-8 text ({e.reason})"))
    except json.JSONDecodeError as e:
        return Record(src.uri, line, "jsonl", error=BadRow("invalid_json", f"{e.msg} at column {e.colno}"))
    if not isinstance(value, dict):
        msg = f"expected a JSON object per line, got {type(value).__name__}"
        return Record(src.uri, line, "jsonl", error=BadRow("invalid_json", msg))
    return Record(src.uri, line, "jsonl", row=value)


def _open(src: SourceFile, block_size: int | None = None) -> io.IOBase:
    compression = infer_compression(src.path)
    f = src.fs.open(src.path, "rb", compression=compression, block_size=block_size)
    if compression is None and not isinstance(f, io.BufferedIOBase) and not hasattr(f, "f"):
        size = min(LINE_BUFFER, getattr(f, "blocksize", LINE_BUFFER))  # one remote block at most per read
        return io.BufferedReader(f, buffer_size=size)  # type: ignore[arg-type]  # fsspec files have readinto
    return f


def scan_jsonl(src: SourceFile, start: Cursor, mine: Callable[[int], bool]) -> Iterator[Row]:
    """The rows of one file from `start` on (`sources.scan`); parsed only where `mine(row)`."""
    row, offset, line = start.row, start.offset, start.line
    with _open(src) as f:
        if offset:
            f.seek(offset)
        for raw in f:
            at_offset, at_line = offset, line
            offset += len(raw)
            line += 1
            if _blank(raw):
                continue
            at = Cursor(row, start.file, at_offset, at_line)
            after = Cursor(row + 1, start.file, offset, line)
            yield Row(at, after, parse_jsonl(src, at_line, raw) if mine(row) else None)
            row += 1


def jsonl_rows(src: SourceFile, offset: int, line: int, end: int | None, *, align: bool = False,
               block_size: int | None = None) -> Iterator[tuple[int, int, bytes]]:
    """`(offset, line, raw line)` of each row that starts at or after byte `offset` and before
    `end` (None: the end of the file), unparsed. `align`: `offset` is the first byte of a range,
    not necessarily of a row: the line it falls into belongs to the range before (unless `offset`
    starts it), so reading starts at the next line start, and the lines are not counted (0)."""
    with _open(src, block_size) as f:
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
            if not _blank(raw):
                yield at_offset, at_line, raw


def fetch_jsonl(src: SourceFile, wanted: Sequence[Cursor]) -> dict[Cursor, Record]:
    """The rows of one file that start at `wanted` (`sources.fetch`)."""
    out: dict[Cursor, Record] = {}
    with _open(src) as f:
        for c in sorted(set(wanted), key=lambda c: c.offset):
            f.seek(c.offset)
            out[c] = parse_jsonl(src, c.line, f.readline())
    return out


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
            with _open(src) as f:
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


class Where:
    """A row's location for messages (`file:line`); the line of a row read from the middle of a
    JSONL file is counted only when the text is needed (a bad row kept as an example, an error)."""

    __slots__ = ("at", "lines", "record")

    def __init__(self, record: Record, at: Cursor, lines: Lines):
        self.record, self.at, self.lines = record, at, lines

    def __str__(self) -> str:
        try:
            return f"{self.record.uri}:{self.lines.line(self.at.file, self.at.offset)}"
        except (OSError, ValueError):  # the file cannot be read again: its byte offset still finds the row
            return f"{self.record.uri}:byte {self.at.offset}"
