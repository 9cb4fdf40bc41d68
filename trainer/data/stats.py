"""What reading a split did: rows in, rows used, bad rows per reason, tokens and packing.

For the training stream (`TrainStream.stats`), every row read is accounted for:
`rows_read == rows_used + bad_total + rows_unreached` (`rows_skipped` = the last two), summed
over ranks, with each rank's own counts in `per_rank`. A row read in two passes counts twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

REASONING_DROPPED = ("reasoning dropped by the chat template: {n} earlier assistant turn(s) (templates show reasoning "
                     "in the last turn only); those turns are trained on their answers")


@dataclass
class DataStats:
    rows_read: int
    rows_used: int
    bad_rows: dict[str, int]
    bad_examples: list[str]
    samples: int
    packed_rows: int
    tokens_total: int  # real (non-padding) tokens
    tokens_trained: int  # tokens with a label (not -100)
    packing_efficiency: float  # tokens_total / (packed_rows * max_seq_len); see trainer.data.packing
    split: str = "train"
    max_seq_len: int = 0
    packing: bool = True
    files: list[str] = field(default_factory=list)
    truncated: int = 0  # samples cut to max_seq_len (`data.too_long: truncate`): used, but not whole
    reasoning_dropped_turns: int = 0  # assistant turns whose reasoning the chat template does not render
    rows_unreached: int = 0  # read and packed, but training stopped (max_steps) before their row came up
    per_rank: list[dict[str, int]] = field(default_factory=list)  # each rank's counts (training stream)

    @property
    def bad_total(self) -> int:
        return sum(self.bad_rows.values())

    @property
    def rows_skipped(self) -> int:
        return self.bad_total + self.rows_unreached

    def as_metrics(self, prefix: str = "data/") -> dict[str, float]:
        out = {
            f"{prefix}rows_read": float(self.rows_read),
            f"{prefix}rows_used": float(self.rows_used),
            f"{prefix}bad_rows": float(self.bad_total),
            f"{prefix}samples": float(self.samples),
            f"{prefix}packed_rows": float(self.packed_rows),
            f"{prefix}tokens_total": float(self.tokens_total),
            f"{prefix}tokens_trained": float(self.tokens_trained),
            f"{prefix}packing_efficiency": float(self.packing_efficiency),
            f"{prefix}truncated": float(self.truncated),
            f"{prefix}reasoning_dropped_turns": float(self.reasoning_dropped_turns),
            f"{prefix}rows_skipped": float(self.rows_skipped),
            f"{prefix}rows_unreached": float(self.rows_unreached),
        }
        out.update({f"{prefix}bad_rows/{reason}": float(n) for reason, n in sorted(self.bad_rows.items())})
        if len(self.per_rank) > 1:
            for r in self.per_rank:
                for key in ("rows_read", "rows_used", "rows_skipped"):
                    out[f"{prefix}rank{r['rank']}/{key}"] = float(r[key])
        return out

    def report(self) -> str:
        bad = ", ".join(f"{r}: {n}" for r, n in sorted(self.bad_rows.items(), key=lambda kv: -kv[1]))
        lines = [
            f"data.{self.split}: {len(self.files)} file(s), {self.rows_read} rows read, {self.rows_used} used, "
            f"{self.bad_total} bad" + (f" ({bad})" if bad else ""),
        ]
        if self.rows_unreached:
            lines.append(f"  not reached: {self.rows_unreached} row(s) read and packed, but training stopped "
                         "(training.max_steps) before their packed row came up")
        if len(self.per_rank) > 1:
            lines += [f"  rank {r['rank']}: {r['rows_read']} read, {r['rows_used']} used, {r['rows_skipped']} skipped"
                      for r in self.per_rank]
        lines += [f"  bad: {e}" for e in self.bad_examples[:3]]
        if self.truncated:
            lines.append(f"  truncated to {self.max_seq_len} tokens: {self.truncated} sample(s) (data.too_long: truncate)")
        if self.reasoning_dropped_turns:
            lines.append(f"  {REASONING_DROPPED.format(n=self.reasoning_dropped_turns)}")
        share = self.tokens_trained / self.tokens_total if self.tokens_total else 0.0
        layout = (
            f"{self.samples} samples packed into {self.packed_rows} rows of {self.max_seq_len}"
            if self.packing
            else f"{self.samples} samples, one per row (max {self.max_seq_len})"
        )
        lines.append(
            f"  {layout}: {self.tokens_total} tokens, {self.tokens_trained} trained ({share:.1%}), "
            f"row fill {self.packing_efficiency:.1%}"
        )
        return "\n".join(lines)
