"""The order in which a pass reads the rows of `data.train`: stripes of every file, interleaved at
random, at flat memory and with a small, exact position.

Why stripes. A shuffle of all rows needs random access to every row (an index of every line's
offset, or a Parquet row group read per row): memory or I/O that grows with the data. A shuffle
buffer alone mixes only neighbours: a file of 1000 rows from source A followed by 1000 from B
trains on A first and B last, and the model forgets A. So a pass cuts its files into stripes and
reads several at once, picking the stripe of each next row at random:

- `Plan`: an uncompressed JSONL file is cut into byte ranges (a row belongs to the range its
  first byte is in: a reader seeks to the range and skips to the next line start), a Parquet
  file into runs of consecutive row groups (empty runs when it has fewer groups than runs), and
  a compressed file, which cannot seek, is one stripe. Data of up to `ACTIVE` x `STRIPE_BYTES`
  (128 MiB) is cut into `ACTIVE` stripes in all, dealt to the files by size (one per file when
  there are more files); larger data into stripes of at most `STRIPE_BYTES` (8 MiB). The plan is
  a few numbers per file: stripe `n` is computed, never listed.
- `Interleave`: a pass opens the stripes in a seeded order (`permuted`, a keyed bijection of the
  stripe numbers), `ACTIVE` at a time; each next row comes from an open stripe picked with
  probability proportional to the bytes it has left (a compressed stripe counts as the plan's
  `target` bytes until it ends; a Parquet stripe as its rows left times its file's bytes per
  row), by a hash of (seed, pass, row number). When a stripe ends, the next one of the order
  opens. Each stripe is read from a seeded point (a row group for Parquet; a compressed stripe
  from its start) to its end, then from its start to that point, so a row's place in the pass
  changes from pass to pass.
  Small data (up to `ACTIVE` stripes) is all open at once, and then this is a uniformly random
  merge of its stripes: every part of the data is spread evenly over the pass (a file of A rows
  then B rows trains on half A in every quarter). Larger data is a block shuffle: at any moment
  the rows come from `ACTIVE` stripes drawn from anywhere in the data, each stripe's rows in file
  order, and the packing window (`packing.pack_window`) shuffles them further. Stripes opened
  together progress together (the weights keep them in step), so they end at about the same
  time and the next ones open together.
- Memory: `ACTIVE` open readers, each with one read buffer of at most `READ_BYTES` (2 MiB, or
  the filesystem's smaller default block size, or the stripe's bytes left) or one Parquet batch
  of `parquet.PARQUET_BATCH_ROWS` rows (column chunks streamed through `PARQUET_BUFFER`);
  nothing grows with the data.
- Ranks: every rank computes the same sequence and keeps its residue class of the row numbers
  (trainer/data/shards.py), so the rows of a pass are split without overlap as before. Every
  rank reads the bytes of every stripe; it parses only its own rows.
- Position: the next row number, how many stripes of the order were opened, and each open
  stripe's next row (stripe, byte offset or Parquet row index, line): at most `ACTIVE` entries,
  whatever the data's size. The choice of each row depends on these and the seed alone, so a
  reader opened at a saved `Position` continues the very same sequence, and `position.reshard`
  can start a new rank at any old rank's position of the pass (all ranks share the sequence).

Designs not taken: a seeded permutation of all rows (needs every row's offset, or a row count
and random access that JSONL does not have); a seeded order of the stripes read round robin
(no weights, but stripes of unequal size — a file's last stripe, a small file — end early and
leave the large ones to the end of the pass, which then trains on few stripes); per-row picks
among all stripes of large data (every stripe open at once: memory and open files grow with
the data).

No torch here: plain arithmetic (trainer/data/seeded.py) and the readers of jsonl.py and parquet.py.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from trainer.data.jsonl import jsonl_rows, parse_jsonl
from trainer.data.parquet import parquet_record, parquet_rows
from trainer.data.records import Cursor, Record, SourceFile, compressed
from trainer.data.seeded import GAMMA, MASK, key, mix, permuted
from trainer.data.sources import read_error

ACTIVE = 16  # stripes open at once
STRIPE_BYTES = 8 * 2**20  # the largest stripe of data larger than ACTIVE x STRIPE_BYTES
READ_BYTES = 2 * 2**20  # an open stripe's read buffer (ranged GETs of this size from S3)
MIN_READ = 64 * 2**10  # ... or of the stripe's bytes left, but not less than this
PARQUET_BUFFER = 2**20  # an open Parquet stripe's column chunk buffer


def _apportion(sizes: Sequence[int], count: int) -> list[int]:
    """`count` stripes (at least one per file) dealt to files by size, by largest remainder."""
    total = sum(sizes) or 1
    parts = [max(1, min(size, count * size // total)) for size in sizes]
    while sum(parts) < count:  # the file furthest below its share gets one more (a stripe has a byte at least)
        grow = [i for i in range(len(sizes)) if parts[i] < sizes[i]]
        if not grow:
            break
        parts[max(grow, key=lambda i: (count * sizes[i] - parts[i] * total, -i))] += 1
    while sum(parts) > count and max(parts, default=1) > 1:  # the file furthest above its share, one less
        parts[min((i for i in range(len(sizes)) if parts[i] > 1),
                  key=lambda i: (count * sizes[i] - parts[i] * total, i))] -= 1
    return parts


@dataclass(frozen=True)
class Stripe:
    file: int  # index into the pass's files
    part: int  # this stripe's number within its file
    parts: int  # the file's stripes
    start: int  # JSONL: first byte; Parquet, compressed: 0
    end: int | None  # JSONL: the byte after its range; None: to the end of the file


class Plan:
    """The stripes of a list of files of known sizes, numbered file after file."""

    def __init__(self, files: Sequence[SourceFile], sizes: Sequence[int]):
        self.files, self.sizes = files, list(sizes)
        total = sum(self.sizes)
        self.target = max(1, min(STRIPE_BYTES, -(-total // ACTIVE)))  # a stripe's bytes, about
        whole = [compressed(f) for f in files]
        if total > ACTIVE * STRIPE_BYTES:  # large data: stripes of at most STRIPE_BYTES
            self.parts = [1 if w else max(1, -(-size // STRIPE_BYTES)) for w, size in zip(whole, sizes, strict=True)]
        else:  # small data: ACTIVE stripes (as many as there are files, if more), all open at once
            cut = [i for i, w in enumerate(whole) if not w]
            self.parts = [1] * len(files)
            for i, n in zip(cut, _apportion([self.sizes[i] for i in cut], ACTIVE - (len(files) - len(cut))),
                            strict=True):
                self.parts[i] = n
        self.first = [0]  # number of each file's first stripe, then the total
        for n in self.parts:
            self.first.append(self.first[-1] + n)

    def __len__(self) -> int:
        return self.first[-1]

    def stripe(self, number: int) -> Stripe:
        file = bisect_right(self.first, number) - 1
        part, parts = number - self.first[file], self.parts[file]
        if self.files[file].kind != "jsonl" or compressed(self.files[file]):
            return Stripe(file, part, parts, 0, None)
        size = self.sizes[file]
        return Stripe(file, part, parts, size * part // parts, size * (part + 1) // parts if part + 1 < parts else None)


@dataclass
class Position:
    """Where a pass's sequence stands; the same on every rank. `open`: each open stripe's next
    row as (stripe, offset, line) — offset and line as in `records.Cursor` — in the order the
    stripes were opened. The fresh `Position()` is the start of the pass."""

    row: int = 0  # the number of the next row of the pass
    opened: int = 0  # stripes of the pass's order opened so far
    open: list[tuple[int, int, int]] = field(default_factory=list)

    def to_list(self) -> list[Any]:
        return [self.row, self.opened, [list(o) for o in self.open]]

    @classmethod
    def from_list(cls, value: Sequence[Any]) -> Position:
        row, opened, open_ = value
        return cls(int(row), int(opened), [(int(s), int(o), int(line)) for s, o, line in open_])


class Row(NamedTuple):
    at: Cursor  # the row's number in the pass and where it starts
    record: Record | None  # None: not wanted, not parsed


class _Open:
    """One open stripe: its reader and its next row (offset, line, weight, payload)."""

    def __init__(self, number: int, stripe: Stripe, rows: Iterator[tuple[int, int, int, Any]]):
        self.number, self.stripe, self.rows = number, stripe, rows
        self.next: tuple[int, int, int, Any] | None = None


class Interleave:
    """The rows of pass `epoch` from `position` on, numbered 0, 1, 2 ... in the pass's seeded
    order; parsed only where `mine(row number)`. `position()` is where it stands."""

    def __init__(self, plan: Plan, seed: int, epoch: int, position: Position,
                 mine: Callable[[int], bool] = lambda row: True, *, field: str = "data.train"):
        self.plan, self.mine, self.field = plan, mine, field
        self.order_key, self.pick_key = key(seed, "stripes", epoch), key(seed, "rows", epoch)
        self.turn_key = key(seed, "turns", epoch)
        self.row, self.opened = position.row, position.opened
        self.open: list[_Open] = []
        for number, offset, line in position.open:
            self._add(number, (offset, line))

    def position(self) -> Position:
        return Position(self.row, self.opened, [(s.number, s.next[0], s.next[1]) for s in self.open if s.next])

    def close(self) -> None:
        for s in self.open:
            s.rows.close()  # type: ignore[attr-defined]  # generators
        self.open = []

    # -- reading one stripe ---------------------------------------------------------------------
    def _rows(self, number: int, stripe: Stripe, at: tuple[int, int] | None) -> Iterator[tuple[int, int, int, Any]]:
        """(offset, line, weight, payload) of the stripe's rows from `at` (None: its start). A
        stripe is read from a seeded point of it (a row group of a Parquet stripe) to its end,
        then from its start to that point: each pass turns it elsewhere, so a row's place in a
        pass's sequence changes from pass to pass."""
        src, size = self.plan.files[stripe.file], self.plan.sizes[stripe.file]
        turn = mix(self.turn_key ^ number)
        if src.kind == "parquet":
            start = None if at is None else at[0]
            for index, left, take in parquet_rows(src, stripe.part, stripe.parts, start, turn=turn, size=size,
                                                  buffer_size=PARQUET_BUFFER):
                yield index, 0, left, take
            return
        most = min(READ_BYTES, getattr(src.fs, "default_block_size", None) or READ_BYTES)

        def block(a: int, b: int) -> int:  # read ahead no further than the bytes from a to b (and a line more)
            return min(most, max(MIN_READ, b - a))

        if compressed(src):  # read from its start: no seeking, no turning
            begin = (0, 1) if at is None else at
            for offset, line, raw in jsonl_rows(src, *begin, None, block_size=most):
                yield offset, line, self.plan.target, raw
            return
        first, end = stripe.start, size if stripe.end is None else stripe.end
        pivot = first + turn % (end - first) if end > first else first

        def fresh(a: int, b: int) -> Iterator[tuple[int, int, bytes]]:
            return jsonl_rows(src, a, 1 if a == 0 else 0, None if b == size else b, align=True,
                              block_size=block(a, b))

        if at is None:
            after, before = fresh(pivot, end), fresh(first, pivot)
        elif at[0] >= pivot:  # in the part after the pivot
            after = jsonl_rows(src, at[0], at[1], stripe.end, block_size=block(at[0], end))
            before = fresh(first, pivot)
        else:
            after, before = iter(()), jsonl_rows(src, at[0], at[1], pivot, block_size=block(at[0], pivot))
        for offset, line, raw in after:
            yield offset, line, end - offset + pivot - first, raw
        for offset, line, raw in before:
            yield offset, line, pivot - offset, raw

    def _add(self, number: int, at: tuple[int, int] | None) -> None:
        """Open stripe `number` (at its start, or at a saved next row) unless it has no row left."""
        stripe = self.plan.stripe(number)
        s = _Open(number, stripe, self._rows(number, stripe, at))
        self._advance(s)
        if s.next is not None:
            self.open.append(s)

    def _advance(self, s: _Open) -> None:
        src = self.plan.files[s.stripe.file]
        try:
            s.next = next(s.rows, None)
        except (OSError, ValueError) as e:  # unreadable file, broken Parquet (ArrowInvalid), S3 errors
            raise read_error(src, e, self.field) from None

    def _fill(self) -> None:
        while len(self.open) < ACTIVE and self.opened < len(self.plan):
            number = permuted(self.opened, len(self.plan), self.order_key)
            self.opened += 1
            self._add(number, None)

    # -- the sequence -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Row]:
        return self

    def __next__(self) -> Row:
        self._fill()
        if not self.open:
            raise StopIteration
        weights = [s.next[2] for s in self.open if s.next]
        target = (mix((self.pick_key + self.row * GAMMA) & MASK) * sum(weights)) >> 64
        i = 0
        while target >= weights[i]:
            target -= weights[i]
            i += 1
        s = self.open[i]
        assert s.next is not None
        offset, line, _, payload = s.next
        src = self.plan.files[s.stripe.file]
        at = Cursor(self.row, s.stripe.file, offset, line)
        record = None
        if self.mine(self.row):
            try:
                record = parquet_record(src, offset, payload()) if src.kind == "parquet" else parse_jsonl(src, line, payload)
            except (OSError, ValueError) as e:
                raise read_error(src, e, self.field) from None
        self.row += 1
        self._advance(s)
        if s.next is None:
            s.rows.close()  # type: ignore[attr-defined]
            self.open.pop(i)
        return Row(at, record)
