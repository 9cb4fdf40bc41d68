"""What reading a split of preference data did (`PreferenceStats`): rows in, rows used, bad rows per reason,
pairs (DPO / ORPO) or desirable / undesirable rows (KTO), answers cut to fit, and token lengths.

`Tally` counts them while the rows are read (trainer/data/preference.py). Lengths, per kind of part:
`prompt`, `chosen`, `rejected` (DPO / ORPO) or `completion` (KTO), and `sequence`: a prompt with its
longer answer, the longest row a batch holds (the one `data.max_seq_len` bounds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from trainer.data.badrows import BadRowLog

PAIRED = ("dpo", "orpo")


def _summary(values: list[int]) -> dict[str, float]:
    s = sorted(values)
    pick = {p: s[max(0, math.ceil(p / 100 * len(s)) - 1)] for p in (50, 90)}  # nearest rank
    return {"mean": round(sum(s) / len(s), 1), "p50": pick[50], "p90": pick[90], "max": s[-1]}


@dataclass
class PreferenceStats:
    objective: str  # dpo | orpo | kto: what the items are (pairs, or labelled rows)
    rows_read: int
    rows_used: int
    bad_rows: dict[str, int]
    bad_examples: list[str]
    pairs: int = 0  # dpo / orpo items
    desirable: int = 0  # kto items labelled true (a pair's chosen answer)
    undesirable: int = 0  # kto items labelled false (a pair's rejected answer)
    truncated: int = 0  # rows whose answers were cut to fit data.max_seq_len (`data.too_long: truncate`)
    lengths: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> mean, p50, p90, max tokens
    split: str = "train"
    max_seq_len: int = 0
    files: list[str] = field(default_factory=list)

    @property
    def bad_total(self) -> int:
        return sum(self.bad_rows.values())

    @property
    def items(self) -> int:
        return self.pairs if self.objective in PAIRED else self.desirable + self.undesirable

    def as_metrics(self, prefix: str = "data/") -> dict[str, float]:
        out = {f"{prefix}rows_read": float(self.rows_read), f"{prefix}rows_used": float(self.rows_used),
               f"{prefix}bad_rows": float(self.bad_total), f"{prefix}truncated": float(self.truncated)}
        if self.objective in PAIRED:
            out[f"{prefix}pairs"] = float(self.pairs)
        else:
            out |= {f"{prefix}desirable": float(self.desirable), f"{prefix}undesirable": float(self.undesirable)}
        out.update({f"{prefix}bad_rows/{reason}": float(n) for reason, n in sorted(self.bad_rows.items())})
        for kind, summary in self.lengths.items():
            out |= {f"{prefix}tokens/{kind}_mean": float(summary["mean"]),
                    f"{prefix}tokens/{kind}_max": float(summary["max"])}
        return out

    def report(self, examples: int = 3) -> str:
        """A few readable lines; the first `examples` bad rows with their file:line."""
        bad = ", ".join(f"{r}: {n}" for r, n in sorted(self.bad_rows.items(), key=lambda kv: -kv[1]))
        lines = [f"data.{self.split}: {len(self.files)} file(s), {self.rows_read} rows read, {self.rows_used} used, "
                 f"{self.bad_total} bad" + (f" ({bad})" if bad else "")]
        lines += [f"  bad: {e}" for e in self.bad_examples[:examples]]
        if self.objective in PAIRED:
            lines.append(f"  {self.pairs} preference pairs for {self.objective}")
        else:
            lines.append(f"  {self.items} rows for kto: {self.desirable} desirable, {self.undesirable} undesirable")
        if self.lengths:
            parts = [f"{kind} mean {s['mean']:g} p90 {s['p90']:g} max {s['max']:g}"
                     for kind, s in self.lengths.items() if kind != "sequence"]
            lines.append("  tokens: " + "; ".join(parts))
            lines.append(f"  prompt + longer answer: max {self.lengths['sequence']['max']:g} tokens "
                         f"(data.max_seq_len {self.max_seq_len})")
        if self.truncated:
            lines.append(f"  answers cut to fit data.max_seq_len: {self.truncated} row(s) (data.too_long: truncate)")
        return "\n".join(lines)


@dataclass
class Tally:
    """Counts while a split is read: rows, items by kind, truncations and every part's length."""

    objective: str
    log: BadRowLog
    rows_read: int = 0
    rows_used: int = 0
    truncated: int = 0
    labels: list[bool] = field(default_factory=list)
    lengths: dict[str, list[int]] = field(default_factory=dict)

    def add(self, item: dict[str, list[int] | bool]) -> None:
        """Count one item as TRL's collators take it: {prompt_ids, chosen_ids, rejected_ids} or
        {prompt_ids, completion_ids, label}."""
        parts = {k.removesuffix("_ids"): v for k, v in item.items() if isinstance(v, list)}
        for kind, ids in parts.items():
            self.lengths.setdefault(kind, []).append(len(ids))
        prompt = parts.pop("prompt")
        self.lengths.setdefault("sequence", []).append(len(prompt) + max(len(v) for v in parts.values()))
        if "label" in item:
            self.labels.append(bool(item["label"]))

    def stats(self, split: str, max_seq_len: int, files: list[str]) -> PreferenceStats:
        desirable = sum(self.labels)
        return PreferenceStats(
            objective=self.objective, rows_read=self.rows_read, rows_used=self.rows_used,
            bad_rows=dict(self.log.counts), bad_examples=list(self.log.examples),
            pairs=len(self.lengths.get("chosen", [])) if self.objective in PAIRED else 0,
            desirable=desirable, undesirable=len(self.labels) - desirable, truncated=self.truncated,
            lengths={k: _summary(v) for k, v in self.lengths.items() if v},
            split=split, max_seq_len=max_seq_len, files=files,
        )
