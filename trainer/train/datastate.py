"""The data position on its way from the training stream to a checkpoint.

The training data is a rank-local stream with a position (trainer/data/stream.py, `TrainStream`):
`state_dict()` after the last row it yielded, `load_state_dict({"ranks": [every rank's state]})`
to continue, re-sharded when the world size changed. Each rank's stream yields only that rank's
rows, so the Trainer's dataloader must never shard it again, nor skip batches on resume
(`trainer.train.resume.ResumableTrainer.get_train_dataloader`, `TrainingArguments(ignore_data_skip=True)`).

A checkpoint must hold the position after the rows that were *trained*, not after the rows a
loader has fetched ahead. So `Tagged` attaches the stream's `state_dict()` to the last row of each
micro-batch, `TaggedCollator` moves it onto the batch, and the Trainer takes it off as each micro-batch
trains (`ResumableTrainer.training_step`): the checkpoint of step k holds the position right after
step k's rows, whatever a loader prefetched. With `training.prefetch` `Tagged` runs in the prefetch
thread: `state_dict()` is this rank's own position, no collective; the checkpoint gathers the ranks'
positions on the main thread (`trainer.train.resume.Checkpointer.save`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from torch.utils.data import IterableDataset

TAG = "kubetune_position"  # batch key: {"state": the stream's position after the batch (or None), "rows": rows}


class Tagged(IterableDataset):
    """Yields the stream's rows; the last row of each micro-batch carries the stream's position after it."""

    def __init__(self, stream: Any, batch_size: int):
        self.stream = stream
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pending = None
        for n, row in enumerate(self.stream, 1):
            if pending is not None:
                yield pending
                pending = None
            if n % self.batch_size == 0:
                yield {**row, TAG: self.stream.state_dict()}  # taken before the stream reads on
            else:
                pending = row  # held back: if the stream ends here, it closes a short micro-batch
        if pending is not None:
            yield {**pending, TAG: self.stream.state_dict()}


class TaggedCollator:
    """Wraps a collator: takes the position tag off the rows and puts it, with the row count, on the batch."""

    def __init__(self, inner: Callable[[list[dict[str, Any]]], dict[str, Any]]):
        self.inner = inner

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        state = None
        clean = []
        for row in rows:
            if TAG in row:
                state = row[TAG]
                row = {k: v for k, v in row.items() if k != TAG}
            clean.append(row)
        batch = self.inner(clean)
        batch[TAG] = {"state": state, "rows": len(clean)}
        return batch

