"""TrainStream: `data.train` as an endless stream of packed rows at flat memory, split across
ranks and DataLoader workers, with an exact position for checkpoints.

Pipeline, per rank: each pass (epoch) reads the rows of `data.train` (local, `s3://`, globs;
JSONL, Parquet, gz) in an order shuffled across all files (`stripes.Interleave`: the files cut
into stripes, `ACTIVE` of them open at once, each next row from a stripe picked at random by the
bytes it has left; seeded by `training.seed` and the pass, so every pass has its own order); the
rows of this rank's share (row g of a pass's sequence belongs to rank g mod world size,
`shards`) are formatted, rendered and tokenized `encode.CHUNK` at a time; the samples of about
`WINDOW_ROWS` rows' worth of tokens are packed best-fit together and the window's packed rows
leave in a seeded random order (`packing.pack_window`; a window is read in trainer/data/window.py).
Nothing else is kept, so memory does not
grow with the data. When a pass ends the next one begins, so the stream never ends:
`training.max_steps` ends training (without it, `count_pass` measures a pass first and
`steps_left` turns `training.epochs` into optimizer steps).
Every row of a pass is read by exactly one (rank, DataLoader worker); deterministic for a
given seed, data and world size.

The data position contract (checkpoints rely on it):

- `state_dict() -> dict`: JSON-serialisable; the position right after the last packed row this
  stream yielded, including the packed rows already read but not yet yielded (as the cursors of
  their rows: file, offset, line), the rows left of each pass it is in (its share, and where the
  pass's shuffled sequence stands: `stripes.Position`, at most `stripes.ACTIVE` open stripes'
  cursors), and the row accounting. Its size does not grow with the data.
  Take it where the yielded rows have been trained, not where a loader fetched them: accelerate's
  prepared loaders iterate a batch ahead. trainer/train/datastate.py attaches it to the last row of
  each micro-batch, and the Trainer keeps the one of the last batch it trained.
- `load_state_dict(state)`: before iterating, restores a position so the next packed row is
  exactly the one the uninterrupted run would have yielded next. `state` is
  `{"ranks": [rank 0's state_dict(), ..., rank N-1's]}` (or one rank's own state_dict() when the
  world size is unchanged). From N ranks to M != N the rows not yet trained are re-sharded
  (`position.restore`, `position.reshard`): none is lost or repeated, the batches differ. The
  Trainer must not skip batches itself on resume (`TrainingArguments(ignore_data_skip=True)`):
  the stream continues.
- The state holds digests of the file list, the files' sizes and the data settings, and the
  seed (`position.fingerprint_of`); loading it with other data raises DataError (resuming would lose
  or repeat rows).
- Positions cover iteration in the main process (`num_workers=0`, as training runs it: the HF
  Trainer's default). DataLoader workers split the rows among themselves as well, but their
  positions and counts stay in the worker processes: don't checkpoint such a loader.

`iter()` continues from the current position (it does not restart), so the Trainer's epochs
simply take the next rows. `stats()` / `finish()` sum the accounting over ranks (collective, main thread
only: iteration and `state_dict()` are rank-local and may run in the prefetch thread, a gather never does).
"""

from __future__ import annotations

import copy
import math
import os
import threading
from collections.abc import Iterator
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from trainer import ranks
from trainer.data import accounting
from trainer.data import packing as pk
from trainer.data.badrows import BadRowLog
from trainer.data.errors import DataError
from trainer.data.position import STATE_FORMAT, Work, check_states, fingerprint_of, restore
from trainer.data.render import ChatRenderer
from trainer.data.shards import fresh, split
from trainer.data.sources import expand
from trainer.data.stats import DataStats
from trainer.data.stripes import Plan
from trainer.data.window import Windows
from trainer.spec.job import JobSpec

WINDOW_ROWS = 64  # a packing window holds about this many rows' worth of tokens (x data.max_seq_len)
FIELD = "data.train"


class TrainStream(IterableDataset):
    def __init__(
        self,
        spec: JobSpec,
        tokenizer: Any,
        *,
        base_dir: str | os.PathLike[str] | None = None,
        storage_options: dict[str, Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        passes: int | None = None,
        window_rows: int = WINDOW_ROWS,
    ):
        data = spec.data
        self.data, self.training = data, spec.training
        self.seed = spec.training.seed
        self.rank = ranks.rank() if rank is None else rank
        self.world_size = ranks.world_size() if world_size is None else world_size
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank {self.rank} of world size {self.world_size}")
        self.passes = passes  # None: endless
        self.files = expand(data.train, storage_options, base_dir, field=FIELD)
        sizes = [f.fs.size(f.path) for f in self.files]
        plan = Plan(self.files, sizes)  # the stripes every pass shuffles (stripes.py)
        renderer = ChatRenderer(tokenizer, max_seq_len=data.max_seq_len, train_on=data.train_on,
                                too_long=data.too_long, reasoning=data.reasoning)
        self.windows = Windows(self.files, plan, renderer, data, self.seed, window_rows * data.max_seq_len, FIELD)
        self.fingerprint = fingerprint_of(spec, self.files, sizes)
        self._pass_rows: int | None = None  # packed rows of one pass over all ranks (count_pass)
        self._generation = 0
        self._worker: tuple[int, int] | None = None  # (worker id, workers) inside a DataLoader worker
        self._start()

    def _start(self) -> None:
        self._work: list[Work] = []
        self._next_epoch = 0
        self.counts = dict.fromkeys(accounting.FIELDS, 0)
        self.log = BadRowLog(self.data.bad_rows, "train")

    # -- length ---------------------------------------------------------------------------
    def count_pass(self) -> DataStats:
        """Read one whole pass (the first, as training will) without keeping it, to learn how many
        packed rows a pass makes (collective: every rank calls it). Bad data fails here, before
        training. Returns the pass's accounting over all ranks."""
        probe = copy.copy(self)
        probe._start()
        probe.passes = 1
        error = None
        try:
            for _ in probe:
                pass
        except DataError as e:  # every rank hears of it: none is left waiting for the others
            error = str(e)
        per_rank = self._gather(probe._rank_counts() | {"error": error})
        errors = [r["error"] for r in per_rank if r["error"]]
        if errors:
            raise DataError(errors[0])
        stats = self._stats(per_rank)
        self._check_bad_fraction(stats)
        self._pass_rows = stats.packed_rows
        return stats

    def steps_left(self) -> int | None:
        """Optimizer steps until `training.epochs` passes are trained, counted from the rows all
        ranks have trained so far (collective); None with `training.max_steps` (it decides)."""
        t = self.training
        if t.max_steps:
            return None
        if self._pass_rows is None:
            self.count_pass()
        assert self._pass_rows is not None
        step_rows = self.world_size * t.per_device_batch_size * t.grad_accum
        done = sum(r["packed_rows"] for r in self._gather(dict(self.counts)))
        return max(0, math.ceil(t.epochs * self._pass_rows / step_rows) - done // step_rows)

    # -- iteration ------------------------------------------------------------------------
    def _fresh(self, epoch: int) -> Work:
        share = fresh(self.rank, self.world_size)
        if self._worker is not None:
            share = split([share], *self._worker)
        return Work(epoch, share)

    def _as_worker(self, worker: int, workers: int) -> None:
        """In DataLoader worker `worker` (a copy of the stream): its part of every pass."""
        self._worker = (worker, workers)
        for w in self._work:
            w.share = split([w.share.after(w.position.row)], worker, workers)
            w.bins = w.bins[worker::workers]

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        info = get_worker_info()
        if info is not None and info.num_workers > 1 and self._worker is None:
            self._as_worker(info.id, info.num_workers)
        self._generation += 1
        gen = self._generation
        while self._generation == gen:
            if not self._work:
                if self.passes is not None and self._next_epoch >= self.passes:
                    return
                self._work.append(self._fresh(self._next_epoch))
                self._next_epoch += 1
            item = self._work[0]
            self.windows.materialize(item)
            while True:
                while item.bins:
                    yield self._hand_out(item)
                    if self._generation != gen:  # a newer iterator (or a loaded state) owns the position
                        return
                if item.finished:
                    break
                self.windows.read(item, self.counts, self.log)
            self._end_pass(item)

    def _hand_out(self, item: Work) -> dict[str, list[int]]:
        b = item.bins.pop(0)
        assert b.samples is not None
        row = pk.row(b.samples)
        c = self.counts
        c["rows_used"] += len(b.samples)
        c["packed_rows"] += 1
        c["tokens_total"] += len(row["input_ids"])
        c["tokens_trained"] += sum(s.trained for s in b.samples)
        c["truncated"] += sum(s.truncated for s in b.samples)
        c["reasoning_dropped_turns"] += sum(s.reasoning_dropped for s in b.samples)
        item.yielded += 1
        return row

    def _end_pass(self, item: Work) -> None:
        self._work.pop(0)
        self.counts["passes"] += 1
        read = self.counts["rows_read"]
        if item.fresh and item.yielded == 0:
            where = f"rank {self.rank} of {self.world_size}" if self.world_size > 1 else "the data"
            names = ", ".join(f.uri for f in self.files[:3]) + (" ..." if len(self.files) > 3 else "")
            if read == 0:
                raise DataError(f"{FIELD}: no rows at all for {where} in {names}: the files are empty"
                                + (" or hold fewer rows than there are ranks" if self.world_size > 1 else ""))
            raise DataError(f"{FIELD}: none of the {read} rows {where} read in {names} is usable "
                            f"(data.format is `{self.data.format}`).\n{self.log.summary()}")
        if self.passes is None:  # training: this rank's rows so far (count_pass checks all ranks at once)
            self.log.check(read)

    # -- position -------------------------------------------------------------------------
    def _rank_counts(self) -> dict[str, Any]:
        return self.counts | {"bad_rows": dict(self.log.counts), "bad_examples": list(self.log.examples),
                              "rows_pending": sum(w.pending_rows for w in self._work), "rank": self.rank}

    def state_dict(self) -> dict[str, Any]:
        counts = self._rank_counts()
        accounting.check(counts)
        del counts["rows_pending"], counts["rank"]
        return {"format": STATE_FORMAT, "rank": self.rank, "world_size": self.world_size,
                "fingerprint": self.fingerprint, "next_epoch": self._next_epoch,
                "work": [w.to_dict() for w in self._work], "counts": counts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        states = state.get("ranks", [state])
        check_states(states, self.fingerprint, FIELD)
        work, next_epoch, counts = restore(states, self.rank, self.world_size, FIELD)
        self._start()
        self._work, self._next_epoch = work, next_epoch
        self.counts = {k: int(counts.get(k, 0)) for k in accounting.FIELDS}  # 0: saved before the field existed
        self.log.counts.update(counts["bad_rows"])
        self.log.examples = list(counts["bad_examples"])
        self._generation += 1  # an iterator made before this does not continue

    # -- accounting -----------------------------------------------------------------------
    def _gather(self, value: dict[str, Any]) -> list[dict[str, Any]]:
        if threading.current_thread() is not threading.main_thread():  # e.g. the prefetch worker (data/prefetch.py)
            raise RuntimeError("TrainStream gathers across ranks on the main thread only: a collective issued from "
                               f"thread {threading.current_thread().name!r} would race the training loop's")
        return accounting.gather(value, self.world_size)

    def _stats(self, per_rank: list[dict[str, Any]]) -> DataStats:
        return accounting.data_stats(per_rank, files=[f.uri for f in self.files], max_seq_len=self.data.max_seq_len,
                                     packing=self.data.packing)

    def stats(self) -> DataStats:
        """Rows read, used (trained) and skipped so far, summed over ranks (collective)."""
        return self._stats(self._gather(self._rank_counts()))

    def finish(self) -> DataStats:
        """At the end of training: the accounting over all ranks; fails (DataError) when more than
        data.bad_rows.max_bad_fraction of the rows read were bad (collective)."""
        accounting.check(self._rank_counts())
        stats = self.stats()
        self._check_bad_fraction(stats)
        return stats

    def _check_bad_fraction(self, stats: DataStats) -> None:
        log = BadRowLog(self.data.bad_rows, "train")
        log.counts.update(stats.bad_rows)
        log.examples = list(stats.bad_examples)
        log.check(stats.rows_read)
