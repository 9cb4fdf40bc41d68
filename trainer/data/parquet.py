"""Reading Parquet files: the rows of one file from a cursor on (`scan_parquet`), batch by batch;
the rows of a run of row groups, one at a time and unparsed (`parquet_rows`, for stripes); single
rows read back by their cursors (`fetch_parquet`). A row's place is its 0-based row index (as
pandas / pyarrow count). pyarrow is imported only when a Parquet file is read; no torch here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from trainer.data.records import Cursor, Record, Row, SourceFile

PARQUET_BATCH_ROWS = 1024


def _groups(pf: Any) -> list[int]:
    """First row index of each row group, plus the total."""
    starts = [0]
    for i in range(pf.metadata.num_row_groups):
        starts.append(starts[-1] + pf.metadata.row_group(i).num_rows)
    return starts


def _group_of(starts: list[int], index: int) -> int:
    """The row group holding row `index` (len(starts) - 1 past the end)."""
    return next((g for g in range(len(starts) - 1) if index < starts[g + 1]), len(starts) - 1)


def scan_parquet(src: SourceFile, start: Cursor, mine: Callable[[int], bool]) -> Iterator[Row]:
    """The rows of one file from `start` on (`sources.scan`); parsed only where `mine(row)`."""
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


def fetch_parquet(src: SourceFile, wanted: Sequence[Cursor]) -> dict[Cursor, Record]:
    """The rows of one file at `wanted` (`sources.fetch`), a row group read at a time."""
    import pyarrow.parquet as pq

    out: dict[Cursor, Record] = {}
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
    return out
