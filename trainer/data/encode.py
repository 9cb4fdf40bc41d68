"""Records -> conversations -> samples, a chunk at a time: the step `build_dataset` and
`TrainStream` share. One tokenizer call per chunk; results come back in row order, so a
`policy: fail` job names the first bad row of the file."""

from __future__ import annotations

from collections.abc import Sequence

from trainer.data.errors import BadRow, DataError
from trainer.data.formats import Message, to_messages
from trainer.data.records import Record
from trainer.data.render import ChatRenderer, Sample
from trainer.spec.data import DataSpec

CHUNK = 256  # conversations tokenized per Rust call

# (file:line — or an object whose str() is that, counted only when a message needs it —, the
# conversation or why the row is bad)
Located = tuple[object, list[Message] | BadRow]


def conversation(rec: Record, data: DataSpec) -> list[Message] | BadRow:
    if rec.error is not None:
        return rec.error
    assert rec.row is not None
    try:
        return to_messages(rec.row, data)
    except BadRow as bad:
        return bad


def encode_chunk(renderer: ChatRenderer, items: Sequence[Located], split: str) -> list[Sample | BadRow]:
    """One result per item, in order. A problem of the whole job (DataError) names the row."""
    located = [(loc, c) for loc, c in items if not isinstance(c, BadRow)]
    try:
        encoded = iter(renderer.encode_many([c for _, c in located]))
    except DataError as e:
        where = located[e.index][0] if isinstance(getattr(e, "index", None), int) else f"data.{split}"
        raise DataError(f"{where}: {e}") from None
    return [conv if isinstance(conv, BadRow) else next(encoded) for _, conv in items]
