"""The bad-row policy: count every unusable row per reason, keep the first examples, and stop
the job when `data.bad_rows` says so (`fail`, or more than `max_bad_fraction` of the rows)."""

from __future__ import annotations

from collections import Counter

from trainer.data.errors import BadRow, DataError
from trainer.spec.data import BadRowsSpec

MAX_EXAMPLES = 10


def where(source: str, line: int, parquet: bool = False) -> str:
    return f"{source}:{'row ' if parquet else ''}{line}"


class BadRowLog:
    def __init__(self, spec: BadRowsSpec, split: str = "train"):
        self.spec = spec
        self.split = split
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def add(self, location: object, bad: BadRow) -> None:
        """Record one bad row; with `policy: fail` this raises at once. `location` (file:line) is
        turned into text only when it is kept or raised: it may be an object that counts lines."""
        self.counts[bad.reason] += 1
        if len(self.examples) >= MAX_EXAMPLES and self.spec.policy != "fail":
            return
        line = f"{location}: {bad.reason} — {bad.message}"
        if len(self.examples) < MAX_EXAMPLES and line not in self.examples:  # a row read again in a later pass
            self.examples.append(line)
        if self.spec.policy == "fail":
            raise DataError(
                f"bad row in data.{self.split} at {line}\n"
                "Fix the row, or set data.bad_rows.policy: skip to count and skip bad rows "
                f"(up to data.bad_rows.max_bad_fraction, now {self.spec.max_bad_fraction})."
            )

    def summary(self) -> str:
        by_reason = ", ".join(f"{r}: {n}" for r, n in self.counts.most_common())
        first = "\n".join(f"  {e}" for e in self.examples)
        return f"bad rows by reason: {by_reason}\nfirst {len(self.examples)}:\n{first}"

    def check(self, rows_read: int) -> None:
        """At the end of a split: too many bad rows stops the job."""
        bad = self.total
        if self.spec.policy == "skip" and rows_read and bad / rows_read > self.spec.max_bad_fraction:
            raise DataError(
                f"data.{self.split}: {bad} of {rows_read} rows are bad ({bad / rows_read:.2%}), more than "
                f"data.bad_rows.max_bad_fraction = {self.spec.max_bad_fraction:g}.\n{self.summary()}\n"
                "Fix the data (or data.format / data.columns / data.max_seq_len), or raise "
                "data.bad_rows.max_bad_fraction if losing these rows is acceptable."
            )
