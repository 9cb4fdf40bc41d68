"""Which rows of a pass a stream reads: residue classes of the pass's row numbers.

A pass numbers its rows 0, 1, 2 ... across all files, in the pass's shuffled order
(`stripes.Interleave`: the same sequence on every rank and worker). A `Share` is a set of
residue classes modulo one `step`, each with the first row still to read: rows `g >= start`
with `g % step == residue`. A fresh pass on `n` streams gives stream `i` the class `i mod n`, so
every row belongs to exactly one stream. `split` divides shares among more or fewer streams —
DataLoader workers of one rank, or the ranks of a resumed job of another world size — again
without overlap or loss: each class is cut into `k` classes of step `step * k`, as many as needed
for the pieces to be dealt out evenly, and the pieces are dealt round robin.

No torch here: plain arithmetic, tested on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from math import gcd


@dataclass(frozen=True)
class Share:
    step: int
    starts: dict[int, int] = field(default_factory=dict)  # residue -> first row still to read

    def __contains__(self, row: int) -> bool:
        start = self.starts.get(row % self.step)
        return start is not None and row >= start

    @property
    def first(self) -> int | None:
        """The lowest row still to read (None: an empty share)."""
        return min(self.starts.values()) if self.starts else None

    def after(self, cursor: int) -> Share:
        """The same classes, with every row before `cursor` read."""
        starts = {}
        for residue, start in self.starts.items():
            if start < cursor:
                start -= (start - cursor) // self.step * self.step  # the class's next row at or after cursor
            starts[residue] = start
        return Share(self.step, starts)

    def to_dict(self) -> dict:
        return {"step": self.step, "starts": {str(r): s for r, s in sorted(self.starts.items())}}

    @classmethod
    def from_dict(cls, value: dict) -> Share:
        return cls(int(value["step"]), {int(r): int(s) for r, s in value["starts"].items()})


def fresh(index: int, count: int) -> Share:
    """Stream `index` of `count` at the start of a pass."""
    if not 0 <= index < count:
        raise ValueError(f"stream {index} of {count}")
    return Share(count, {index: index})


def split(shares: Sequence[Share], index: int, count: int) -> Share:
    """Stream `index` of `count` new streams' part of the rows left in `shares` (one step for all)."""
    if not 0 <= index < count:
        raise ValueError(f"stream {index} of {count}")
    steps = {s.step for s in shares if s.starts}
    if len(steps) > 1:
        raise ValueError(f"shares of one pass must have one step, got {sorted(steps)}")
    classes = [(r, st) for s in shares for r, st in sorted(s.starts.items())]
    if not classes:
        return Share(1)
    step = steps.pop()
    k = count // gcd(len(classes), count)  # pieces per class, so that len(classes) * k divides evenly
    pieces = [((start + i * step) % (step * k), start + i * step) for _, start in classes for i in range(k)]
    return Share(step * k, dict(pieces[index::count]))
