"""Best-fit-decreasing packing of samples into rows of at most `max_seq_len` tokens.

Samples are placed longest first, each into the open row with the least room that still fits
it (a new row when none does). Rows are indexed by remaining room, so placing n samples costs
O(n log n). Every sample's `position_ids` restart at 0: transformers (checked in 5.23,
`masking_utils.find_packed_sequence_indices`) turns restarting position ids into a
block-diagonal causal mask when no `attention_mask` is passed (sdpa, eager, flex), so no sample
attends to another. Flash-attention reads packed sequences from position ids only for batch
size 1, which is what `Collator(padding_free=True)` produces.

Streaming (`TrainStream`) packs a bounded window at a time (`pack_window`): the samples of about
`WINDOW_ROWS` rows' worth of tokens go through best-fit-decreasing together and the resulting rows
leave in a seeded random order. Memory is bounded by the window, not the dataset; the price is
that a sample can only share a row with samples of its own window, so the window's last rows are
less full than a global best fit over all samples would leave them (measured by
`python bench/streaming.py`; see docs/data.md, "Data at scale").

Packing efficiency (DataStats.packing_efficiency) = real tokens / (rows x max_seq_len): the share
of the row budget that holds sample tokens. The collator pads each micro-batch only to its
longest row, so the padded layout actually computed on is at least this efficient; the
collator counts its own real / padded tokens (`Collator.efficiency`).
"""

from __future__ import annotations

import random
from bisect import bisect_left, insort
from collections.abc import Sequence

from trainer.data.render import Sample

Item = dict[str, list[int]]


def best_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Group sample indices into bins whose lengths sum to at most `capacity`."""
    if any(n > capacity or n <= 0 for n in lengths):
        raise ValueError(f"every length must be in 1..{capacity}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    by_room: dict[int, list[int]] = {}  # remaining room -> open bins with exactly that room
    rooms: list[int] = []  # sorted keys of by_room
    for i in order:
        n = lengths[i]
        k = bisect_left(rooms, n)
        if k < len(rooms):
            room = rooms[k]
            b = by_room[room].pop()
            if not by_room[room]:
                del by_room[room]
                rooms.pop(k)
        else:
            room, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        left = room - n
        if left > 0:
            if left not in by_room:
                by_room[left] = []
                insort(rooms, left)
            by_room[left].append(b)
    return bins


def row(samples: Sequence[Sample]) -> Item:
    """Concatenate samples into one row, position ids restarting at 0 for each."""
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for s in samples:
        input_ids += s.input_ids
        labels += s.labels
        position_ids += range(len(s.input_ids))
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}


def pack(samples: Sequence[Sample], max_seq_len: int) -> list[Item]:
    bins = best_fit_decreasing([len(s.input_ids) for s in samples], max_seq_len)
    return [row([samples[i] for i in b]) for b in bins]


def pack_window(lengths: Sequence[int], capacity: int, packing: bool, rng: random.Random) -> list[list[int]]:
    """One window's rows as lists of sample indices (best fit, or one sample each), in `rng`'s order."""
    bins = best_fit_decreasing(lengths, capacity) if packing else [[i] for i in range(len(lengths))]
    rng.shuffle(bins)
    return bins


def unpacked(samples: Sequence[Sample]) -> list[Item]:
    return [row([s]) for s in samples]


def efficiency(tokens: int, rows: int, max_seq_len: int) -> float:
    return tokens / (rows * max_seq_len) if rows else 0.0
