"""Row accounting of the training stream: per-rank counters, merged and summed into DataStats.

A rank's counters are a plain dict (they travel in checkpoints and across ranks):
`rows_read` (rows of this rank's share taken from the files, bad ones included), `rows_used`
(rows whose sample was in a packed row handed to training), `bad_rows` (per reason) with the
first `bad_examples`, `rows_pending` (read and packed, not handed out yet), the packed rows,
tokens, truncated samples and assistant turns whose reasoning the chat template dropped
(`reasoning_dropped_turns`) handed out, and the `passes` finished. At every point between two
packed rows: rows_read == rows_used + sum(bad_rows) + rows_pending. When training ends, the rows
still pending are the ones it did not reach (`DataStats.rows_unreached`). `gather` collects a
value of every rank (torch.distributed, imported only then).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from trainer.data.badrows import MAX_EXAMPLES
from trainer.data.stats import DataStats

FIELDS = ("rows_read", "rows_used", "packed_rows", "tokens_total", "tokens_trained", "truncated", "passes",
          "reasoning_dropped_turns")


def empty() -> dict[str, Any]:
    return {**dict.fromkeys(FIELDS, 0), "bad_rows": {}, "bad_examples": []}


def merge(counts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several counters (the first MAX_EXAMPLES distinct bad examples)."""
    out = empty()
    bad: Counter[str] = Counter()
    for c in counts:
        for key in FIELDS:
            out[key] += int(c.get(key, 0))  # .get: counters saved before a field existed
        bad.update(c.get("bad_rows", {}))
        out["bad_examples"] += [e for e in c.get("bad_examples", []) if e not in out["bad_examples"]]
    out["bad_rows"] = dict(bad)
    out["bad_examples"] = out["bad_examples"][:MAX_EXAMPLES]
    return out


def check(counts: dict[str, Any]) -> None:
    """The accounting identity; a broken one is a bug in the stream, never the data's fault."""
    bad = sum(counts["bad_rows"].values())
    if counts["rows_read"] != counts["rows_used"] + bad + counts["rows_pending"]:
        raise AssertionError(f"row accounting broken: {counts}")


def gather(value: dict[str, Any], world_size: int) -> list[dict[str, Any]]:
    """`value` of every rank, in rank order (collective when torch.distributed runs more than one rank)."""
    import torch.distributed as dist

    if world_size > 1 and dist.is_available() and dist.is_initialized():
        out: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(out, value)
        return out
    return [value]


def data_stats(per_rank: Sequence[dict[str, Any]], *, files: list[str], max_seq_len: int, packing: bool) -> DataStats:
    """Summed over ranks; each rank's counts kept in `per_rank`."""
    total = merge(per_rank)
    pending = sum(int(r["rows_pending"]) for r in per_rank)
    ranks = [
        {"rank": int(r["rank"]), "rows_read": int(r["rows_read"]), "rows_used": int(r["rows_used"]),
         "rows_skipped": sum(r["bad_rows"].values()) + int(r["rows_pending"]), "rows_unreached": int(r["rows_pending"]),
         "passes": int(r["passes"])}
        for r in per_rank
    ]
    tokens, rows = total["tokens_total"], total["packed_rows"]
    return DataStats(
        rows_read=total["rows_read"],
        rows_used=total["rows_used"],
        bad_rows=total["bad_rows"],
        bad_examples=total["bad_examples"],
        samples=total["rows_used"],
        packed_rows=rows,
        tokens_total=tokens,
        tokens_trained=total["tokens_trained"],
        packing_efficiency=tokens / (rows * max_seq_len) if rows else 0.0,
        split="train",
        max_seq_len=max_seq_len,
        packing=packing,
        files=files,
        truncated=total["truncated"],
        reasoning_dropped_turns=total["reasoning_dropped_turns"],
        rows_unreached=pending,
        per_rank=ranks,
    )
