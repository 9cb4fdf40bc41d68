"""Chunks -> examples -> JSONL: the loop behind `launch data generate`.

For every chunk not yet done: ask the helper model (`ChatClient`, which retries 429/5xx/timeouts itself), read
its answer (`answer.parse`); an answer with no usable example is asked again, up to `max_retries` times, then the
chunk is recorded as failed with the reason (a re-run tries failed chunks again; done ones are skipped). Each
chunk's examples are committed to the database as soon as they arrive, deduplicated by normalised instruction.
At the end every stored example is written as JSONL, with a `source` field (`path#L10-L42`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from launcher.datagen import answer, store
from launcher.datagen.client import ChatClient

Format = Literal["instruction", "messages"]


@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[int, str]] = field(default_factory=list)  # (chunk id, reason)
    examples_new: int = 0
    duplicates: int = 0
    invalid: int = 0  # items of answers that were not usable examples
    written: int = 0
    requests: int = 0
    retries: int = 0


def run(conn: sqlite3.Connection, client: ChatClient, *, per_chunk: int, response_format: str,
        max_chars: int | None, max_tokens: int | None, temperature: float, seed: int | None,
        limit: int | None = None, progress: Callable[[str], None] = lambda _: None) -> Summary:
    summary = Summary()
    params: dict[str, Any] = {"temperature": temperature}
    if fmt := answer.response_format(response_format, per_chunk, max_chars):
        params["response_format"] = fmt
    if max_tokens:
        params["max_tokens"] = max_tokens
    if seed is not None:
        params["seed"] = seed
    todo = 0
    for chunk in list(store.chunks(conn)):
        if store.status(conn, chunk.id) == "done":
            summary.skipped += 1
            continue
        if limit is not None and todo >= limit:
            break
        todo += 1
        _one(conn, client, chunk, per_chunk, params, summary)
        progress(f"chunk {chunk.id} ({chunk.source}): {_last(summary, chunk.id)}")
    summary.requests, summary.retries = client.requests, client.retries
    return summary


def _one(conn: sqlite3.Connection, client: ChatClient, chunk: store.StoredChunk, k: int, params: dict[str, Any],
         summary: Summary) -> None:
    reasons: list[str] = []
    for attempt in range(1, client.max_retries + 2):
        seed = {"seed": params["seed"] + attempt - 1} if "seed" in params else {}  # the same seed: the same answer
        text = client.complete(answer.messages(chunk, k), **{**params, **seed})
        try:
            parsed = answer.parse(text)
        except answer.BadAnswer as e:
            reasons.append(str(e))
            continue
        found = parsed.examples[:k]
        summary.invalid += parsed.invalid
        rows = [(i, o, answer.normalize(i)) for i, o in found]
        first: dict[str, tuple[str, str, str]] = {}
        for row in rows:  # duplicates within the answer: the first one stays
            first.setdefault(row[2], row)
        unique = list(first.values())
        duplicates = store.record(conn, chunk.id, client.model, attempt, unique)
        summary.duplicates += duplicates + len(rows) - len(unique)
        summary.examples_new += len(unique) - duplicates
        summary.done += 1
        return
    reason = f"{len(reasons)} answer(s) without usable examples; the last: {reasons[-1]}"
    store.record(conn, chunk.id, client.model, len(reasons), None, reason)
    summary.failed.append((chunk.id, reason))


def _last(summary: Summary, chunk_id: int) -> str:
    return "failed" if summary.failed and summary.failed[-1][0] == chunk_id else "done"


def rows(conn: sqlite3.Connection, fmt: Format) -> Iterator[dict[str, Any]]:
    """The stored examples as training rows in the spec's `instruction` or `messages` format."""
    for instruction, output, chunk in store.examples(conn):
        if fmt == "instruction":
            yield {"instruction": instruction, "input": "", "output": output, "source": chunk.source}
        else:
            yield {"messages": [{"role": "user", "content": instruction}, {"role": "assistant", "content": output}],
                   "source": chunk.source}


def write(conn: sqlite3.Connection, out: str, fmt: Format) -> int:
    """Write every stored example to `out` (a local path, or `s3://...` through fsspec); the row count."""
    from trainer.storage import filesystem, is_remote

    lines = [json.dumps(row, ensure_ascii=False) + "\n" for row in rows(conn, fmt)]
    if is_remote(out):
        fs, path = filesystem(out)
        with fs.open(path, "w", encoding="utf-8") as f:
            f.writelines(lines)
        return len(lines)
    target = Path(out.removeprefix("file://"))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.writelines(lines)
    os.replace(tmp, target)  # a reader never sees half a file
    return len(lines)
