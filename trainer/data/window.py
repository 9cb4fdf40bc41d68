"""Packing windows of a training pass: `Windows.read` takes the next rows of a stream's share of a
pass's shuffled sequence (`stripes.Interleave`), formats, renders and tokenizes them
`encode.CHUNK` at a time until about `window_tokens` tokens, and packs the samples best-fit
together into bins that leave in a seeded random order (`packing.pack_window`);
`Windows.materialize` reads the rows of bins loaded from a saved position back by their cursors
(`sources.fetch`) and tokenizes them again, which gives the very same samples.
TrainStream (trainer/data/stream.py) hands the bins out and keeps the counts and the bad-row log.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from trainer.data import packing as pk
from trainer.data.badrows import BadRowLog
from trainer.data.encode import CHUNK, Located, conversation, encode_chunk
from trainer.data.errors import BadRow, DataError
from trainer.data.jsonl import Lines, Where
from trainer.data.position import Bin, Work
from trainer.data.records import Cursor, Record, SourceFile
from trainer.data.render import ChatRenderer, Sample
from trainer.data.sources import fetch
from trainer.data.stripes import Interleave, Plan
from trainer.spec.data import DataSpec


class Windows:
    """How a stream reads its rows: the files and their stripes, the renderer, the data settings."""

    def __init__(self, files: Sequence[SourceFile], plan: Plan, renderer: ChatRenderer, data: DataSpec, seed: int,
                 window_tokens: int, field: str):
        self.files, self.plan, self.renderer, self.data = files, plan, renderer, data
        self.seed, self.window_tokens, self.field = seed, window_tokens, field
        self.lines = Lines(files)

    def _encode(self, chunk: list[tuple[Cursor, Located]], window: list[tuple[Cursor, Sample]], log: BadRowLog) -> int:
        located = [loc for _, loc in chunk]
        tokens = 0
        for (at, (where, _)), result in zip(chunk, encode_chunk(self.renderer, located, "train"), strict=True):
            if isinstance(result, BadRow):
                log.add(where, result)  # `policy: fail` raises here, naming the row
            else:
                window.append((at, result))
                tokens += len(result.input_ids)
        return tokens

    def read(self, item: Work, counts: dict[str, Any], log: BadRowLog) -> None:
        """Read, tokenize and pack the next window of `item` into its bins (`finished` at the pass's end)."""
        if item.reader is None:
            item.reader = Interleave(self.plan, self.seed, item.epoch, item.position, item.share.__contains__,
                                     field=self.field)
        reader = item.reader
        window: list[tuple[Cursor, Sample]] = []
        chunk: list[tuple[Cursor, Located]] = []
        tokens = 0
        while tokens < self.window_tokens:
            row = next(reader, None)
            if row is None:
                item.finished, item.reader = True, None
                break
            if row.record is None:
                continue
            counts["rows_read"] += 1
            chunk.append((row.at, (self._where(row.record, row.at), conversation(row.record, self.data))))
            if len(chunk) >= CHUNK:
                tokens += self._encode(chunk, window, log)
                chunk = []
        item.position = reader.position()  # right after the last row read (a state is taken between windows)
        if chunk:
            self._encode(chunk, window, log)
        if window:
            rng = random.Random(f"{self.seed}/{item.epoch}/{window[0][0].row}")
            lengths = [len(s.input_ids) for _, s in window]
            bins = pk.pack_window(lengths, self.data.max_seq_len, self.data.packing, rng)
            item.bins = [Bin([window[i][0] for i in b], [window[i][1] for i in b]) for b in bins]

    def _where(self, record: Record, at: Cursor) -> str | Where:
        return Where(record, at, self.lines) if record.kind == "jsonl" and not record.line else record.location

    def materialize(self, item: Work) -> None:
        """Read the rows of bins loaded from a state again; they must give the same samples."""
        todo = [b for b in item.bins if b.samples is None]
        if not todo:
            return
        cursors = [c for b in todo for c in b.refs]
        records = fetch(self.files, cursors, field=self.field)
        located: list[Located] = [(self._where(r, c), conversation(r, self.data))
                                  for r, c in zip(records, cursors, strict=True)]
        results = iter(zip(located, encode_chunk(self.renderer, located, "train"), strict=True))
        for b in todo:
            b.samples = []
            for (where, _), result in (next(results) for _ in b.refs):
                if isinstance(result, BadRow):
                    raise DataError(f"{self.field}: {where} is not the row it was when the checkpoint was written "
                                    f"({result.reason}): the data changed; resuming would not train the same rows")
                b.samples.append(result)
