"""A stream's position as data: what is left of each pass it is in, and how positions saved by N
ranks become the positions of M ranks.

A `Work` item is one pass (`epoch`) seen from one stream: the rows of its `share` not read yet
(reading resumes at `position`, a `stripes.Position` in the pass's shuffled sequence of rows),
and the `bins` — packed rows already read and packed but not yet handed to training, each a list
of its samples' row cursors. A stream works through its items in order and then starts fresh
passes (`next_epoch`, ...). In a saved state the bins hold cursors only; the stream reads those
rows again (`sources.fetch`) and re-tokenizes them, which gives the very same samples.

Re-sharding (`reshard`): for every pass some old rank is still in, the new stream takes its
`shards.split` part of what the old ranks had left of that pass (a rank that had not started the
pass yet contributes its whole fresh share), and every M-th of the old ranks' pending bins, in
rank order. It reads from the furthest old position at or before its first row: every rank
computes the same sequence, so any rank's position is a place in it. Counters follow: new rank j
sums old ranks j, j+M, ... minus their pending rows, plus the rows of the bins it takes, so the
totals over ranks are unchanged. No row is lost or read twice; batches differ from the
uninterrupted run's, as they must with another world size.

Loading (`restore`): the saved states of all ranks (or one rank's own, with the world size
unchanged) become this stream's work items, next fresh pass and counters, re-sharded when the
world size changed. A state also holds the `fingerprint` of what it depends on (the file list,
the files' sizes, the data settings and base model, the seed), as short digests; `check_states`
refuses a state of other data, which would lose or repeat rows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from trainer.data import accounting
from trainer.data.errors import DataError
from trainer.data.records import Cursor, SourceFile
from trainer.data.render import Sample
from trainer.data.shards import Share, fresh, split
from trainer.data.stripes import Interleave, Position
from trainer.spec.job import JobSpec

STATE_FORMAT = "kubetune.train-stream/2"  # /2: rows shuffled across stripes (stripes.py)


@dataclass
class Bin:
    refs: list[Cursor]  # where each sample's row starts, in the packed row's order
    samples: list[Sample] | None = None  # None until read (a position loaded from a state)


@dataclass
class Work:
    epoch: int
    share: Share
    position: Position = field(default_factory=Position)
    bins: list[Bin] = field(default_factory=list)
    fresh: bool = True  # a whole pass from its start: no packed row from it is an error
    yielded: int = 0  # packed rows handed out from this pass
    finished: bool = False  # every row of the share read (not saved: reading again at the end finds none)
    reader: Interleave | None = None  # the open reader; `position` is set from it after each window (never saved)

    @property
    def pending_rows(self) -> int:
        return sum(len(b.refs) for b in self.bins)

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "share": self.share.after(self.position.row).to_dict(),
            "position": self.position.to_list(),
            "bins": [[c.to_list() for c in b.refs] for b in self.bins],
            "fresh": self.fresh,
            "yielded": self.yielded,
        }

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> Work:
        return cls(
            epoch=int(value["epoch"]),
            share=Share.from_dict(value["share"]),
            position=Position.from_list(value["position"]),
            bins=[Bin([Cursor.from_list(c) for c in b]) for b in value["bins"]],
            fresh=bool(value["fresh"]),
            yielded=int(value["yielded"]),
        )

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers get a copy: an open reader does not travel
        return {**self.__dict__, "reader": None}


def _hint(positions: Sequence[Position], first: int | None) -> Position:
    """The furthest position that is still at or before row `first` (the start of the pass if none)."""
    usable = [p for p in positions if first is not None and p.row <= first]
    return max(usable, key=lambda p: p.row, default=Position())


def reshard(states: Sequence[dict[str, Any]], index: int, count: int) -> tuple[list[Work], int, dict[str, Any]]:
    """Stream `index` of `count`: its work items, next fresh pass and counters, from the states of
    all ranks of the saved world (in rank order)."""
    old = len(states)
    works = [[Work.from_dict(w) for w in s["work"]] for s in states]
    nexts = [int(s["next_epoch"]) for s in states]
    started = [min([w.epoch for w in ws] or [n]) for ws, n in zip(works, nexts, strict=True)]
    mine: list[Work] = []
    all_bins: list[Bin] = []
    for epoch in range(min(started), max(nexts)):
        shares, positions, bins = [], [], []
        for rank, (ws, n) in enumerate(zip(works, nexts, strict=True)):
            item = next((w for w in ws if w.epoch == epoch), None)
            if item is not None:
                shares.append(item.share)
                positions.append(item.position)
                bins += item.bins
            elif epoch >= n:  # this rank had not begun the pass: all of its fresh share is left
                shares.append(fresh(rank, old))
        share = split(shares, index, count)
        taken = bins[index::count]
        all_bins += taken
        mine.append(Work(epoch, share, _hint(positions, share.first), taken, fresh=False))
    kept = []
    for rank, state in enumerate(states):
        if rank % count == index:
            c = dict(state["counts"])
            c["rows_read"] -= sum(w.pending_rows for w in works[rank])
            kept.append(c)
    counts = accounting.merge(kept)
    counts["rows_read"] += sum(len(b.refs) for b in all_bins)
    return mine, max(nexts), counts


def restore(states: list[dict[str, Any]], rank: int, world_size: int,
            field: str) -> tuple[list[Work], int, dict[str, Any]]:
    """Stream `rank` of `world_size`: its work items, next fresh pass and counters from saved states (checked)."""
    saved = int(states[0]["world_size"])
    if saved == world_size and len(states) == 1 and int(states[0]["rank"]) != rank:
        raise DataError(f"{field}: rank {rank} was given rank {states[0]['rank']}'s data position; "
                        "load every rank's state as {'ranks': [...]}")
    if saved == world_size:
        own = states[rank] if len(states) > 1 else states[0]
        return [Work.from_dict(w) for w in own["work"]], int(own["next_epoch"]), own["counts"]
    if len(states) != saved:
        raise DataError(f"{field}: the checkpoint was written by {saved} ranks; resuming on {world_size} "
                        f"needs all {saved} data positions, got {len(states)}")
    return reshard(states, rank, world_size)


def fingerprint_of(spec: JobSpec, files: Sequence[SourceFile], sizes: Sequence[int]) -> dict[str, Any]:
    """What a saved position depends on, as short digests (a state stays small with many files)."""

    def digest(value: Any) -> str:
        return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]

    settings = spec.data.model_dump(mode="json", exclude={"eval", "bad_rows"})
    settings |= {"base_model": spec.base_model, "chat_template": spec.model.chat_template}
    return {"files": digest([f.uri for f in files]), "sizes": digest(list(sizes)),
            "seed": spec.training.seed, "settings": digest(settings)}


def check_states(states: list[dict[str, Any]], now: dict[str, Any], field: str) -> None:
    """DataError unless `states` are data positions of this version, taken on data of fingerprint `now`."""
    for s in states:
        if s.get("format") != STATE_FORMAT:
            raise DataError(f"{field}: not a data position of this kubetune version: {s.get('format')!r}")
    before = states[0]["fingerprint"]
    changes = [k for k in ("files", "sizes", "seed", "settings") if before[k] != now[k]]
    if changes:
        what = {"files": "the list of files", "sizes": "the files' contents (sizes)",
                "seed": "training.seed", "settings": "the data settings or base model"}
        raise DataError(f"{field}: {', '.join(what[c] for c in changes)} changed since the checkpoint was "
                        "written, so resuming would lose or repeat rows. Restore them, or train afresh "
                        "into a new output.uri.")
