"""build_dataset: files -> rows -> conversations -> samples -> (packed) rows, with statistics."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any, Literal

from trainer.data import packing as pk
from trainer.data.badrows import BadRowLog
from trainer.data.encode import CHUNK, Located, conversation, encode_chunk
from trainer.data.errors import BadRow, DataError
from trainer.data.formats import Message
from trainer.data.preference_rows import PREFERENCE_FORMATS, prompt_turns
from trainer.data.records import Record, SourceFile
from trainer.data.render import ChatRenderer, Sample
from trainer.data.sources import expand, read_records
from trainer.data.stats import DataStats
from trainer.spec.job import JobSpec

Split = Literal["train", "eval"]


def _files(
    spec: JobSpec, split: str, base_dir: str | os.PathLike[str] | None, storage_options: dict[str, Any] | None
) -> list[SourceFile]:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    uris = spec.data.train if split == "train" else spec.data.eval
    if uris is None:
        raise DataError("data.eval is not set: give held-out data (a file, glob or s3:// URI) to evaluate on")
    return expand(uris, storage_options, base_dir, field=f"data.{split}")


def _conversations(records: Iterator[Record], spec: JobSpec) -> Iterator[Located]:
    for rec in records:
        yield rec.location, conversation(rec, spec.data)


def _samples(files: list[SourceFile], spec: JobSpec, renderer: ChatRenderer, log: BadRowLog,
             split: str) -> tuple[list[Sample], int]:
    """The samples of every usable row of `files`, in file order, and how many rows were read; bad rows go to `log`."""
    samples: list[Sample] = []
    rows_read = 0
    pending: list[Located] = []

    def flush() -> None:
        for (location, _), result in zip(pending, encode_chunk(renderer, pending, split), strict=True):
            if isinstance(result, BadRow):
                log.add(location, result)  # in file order, so `policy: fail` names the first bad row
            else:
                samples.append(result)
        pending.clear()

    for location, conv in _conversations(read_records(files, f"data.{split}"), spec):
        rows_read += 1
        pending.append((location, conv))
        if len(pending) >= CHUNK:
            flush()
    flush()
    return samples, rows_read


def _stats(spec: JobSpec, split: str, files: list[SourceFile], samples: list[Sample], items: list[dict[str, list[int]]],
           rows_read: int, log: BadRowLog) -> DataStats:
    data = spec.data
    tokens = sum(len(s.input_ids) for s in samples)
    return DataStats(
        rows_read=rows_read,
        rows_used=len(samples),
        bad_rows=dict(log.counts),
        bad_examples=list(log.examples),
        samples=len(samples),
        packed_rows=len(items),
        tokens_total=tokens,
        tokens_trained=sum(s.trained for s in samples),
        packing_efficiency=pk.efficiency(tokens, len(items), data.max_seq_len),
        split=split,
        max_seq_len=data.max_seq_len,
        packing=data.packing,
        files=[f.uri for f in files],
        truncated=sum(s.truncated for s in samples),
        reasoning_dropped_turns=sum(s.reasoning_dropped for s in samples),
    )


def build_dataset(
    spec: JobSpec,
    tokenizer: Any,
    split: Split = "train",
    *,
    base_dir: str | os.PathLike[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[list[dict[str, list[int]]], DataStats]:
    """Rows ready for `Collator`: `{"input_ids", "labels", "position_ids"}` each. Raises DataError.

    `base_dir`: folder that relative local paths in the spec are taken against (the spec's
    folder); unset, the working directory. `storage_options`: extra fsspec filesystem options.
    """
    data = spec.data
    files = _files(spec, split, base_dir, storage_options)
    renderer = ChatRenderer(tokenizer, max_seq_len=data.max_seq_len, train_on=data.train_on, too_long=data.too_long,
                            reasoning=data.reasoning)
    log = BadRowLog(data.bad_rows, split)
    samples, rows_read = _samples(files, spec, renderer, log, split)

    names = ", ".join(f.uri for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    if rows_read == 0:
        raise DataError(f"data.{split}: no rows at all in {names}; the files are empty")
    log.check(rows_read)
    if not samples:
        raise DataError(
            f"data.{split}: none of the {rows_read} rows in {names} is usable (data.format is "
            f"`{data.format}`).\n{log.summary()}"
        )
    items = pk.pack(samples, data.max_seq_len) if data.packing else pk.unpacked(samples)
    stats = _stats(spec, split, files, samples, items, rows_read, log)
    assert stats.rows_read == stats.rows_used + stats.bad_total
    return items, stats


def conversations(
    spec: JobSpec,
    split: str,
    limit: int,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> list[list[Message]]:
    """The first `limit` conversations of a split that pass the format checks (bad rows skipped);
    reads only as far as needed. Preference data (`data.format: preference | unpaired`): each prompt with its
    preferred answer (trainer/data/preference_rows.py `prompt_turns`)."""
    out: list[list[Message]] = []
    if limit <= 0:
        return out
    records = read_records(_files(spec, split, base_dir, storage_options), f"data.{split}")
    if spec.data.format in PREFERENCE_FORMATS:
        located: Iterator[Located] = ((r.location, prompt_turns(r, spec.data)) for r in records)
    else:
        located = _conversations(records, spec)
    for _, conv in located:
        if not isinstance(conv, BadRow):
            out.append(conv)
            if len(out) >= limit:
                break
    return out
