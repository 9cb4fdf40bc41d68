"""build_preference: files -> preference rows -> token ids as TRL's preference collators take them, with statistics.

For `training.objective: dpo | orpo | kto` (docs/preference.md). Rows are read as `build_dataset` reads
them (trainer/data/sources.py) and parsed by trainer/data/preference_rows.py; each answer is rendered
after its prompt through the SFT renderer (`ChatRenderer`: the chat template, Harmony, `<think>`, BOS,
turn endings), so a preference row tokenizes exactly as the same conversation does for SFT. Only the
last assistant turn is the answer: `prompt_ids` are every token before its first trained token (BOS
included; earlier assistant turns of a multi-turn prompt are context), and the answer's ids run from
that token through its last trained one, the stop token that ends the turn (not the newline some
templates write after it). The prompts rendered before `chosen` and before `rejected` must be the same
tokens (else `prompt_mismatch`).

Items: dpo / orpo `{"prompt_ids", "chosen_ids", "rejected_ids"}` (trl DataCollatorForPreference);
kto `{"prompt_ids", "completion_ids", "label"}` (DataCollatorForUnpairedPreference), a `preference`
pair giving two: chosen (true) and rejected (false).

Length: a prompt with its longer answer must fit `data.max_seq_len`; else `too_long`, or with
`data.too_long: truncate` the answers are cut to fit (counted). A prompt that leaves no room for one
answer token is a bad row either way. Bad rows follow `data.bad_rows`, as for SFT.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from trainer.data.badrows import BadRowLog
from trainer.data.builder import Split, _files
from trainer.data.encode import CHUNK
from trainer.data.errors import BadRow, DataError
from trainer.data.packing import unpacked
from trainer.data.preference_rows import Row, parse_record
from trainer.data.preference_stats import PAIRED, PreferenceStats, Tally
from trainer.data.records import Record, SourceFile
from trainer.data.render import IGNORE, ChatRenderer, Sample
from trainer.data.sources import read_records
from trainer.spec.data import DataSpec
from trainer.spec.job import JobSpec

Item = dict[str, Any]  # {prompt_ids, chosen_ids, rejected_ids} or {prompt_ids, completion_ids, label}


@dataclass
class Encoded:
    prompt_ids: list[int]
    answers: list[list[int]]  # (chosen, rejected) or (completion,)
    truncated: bool = False


def last_turn(sample: Sample) -> tuple[list[int], list[int]]:
    """A rendered conversation's ids before its last trained span, and that span (the last assistant turn)."""
    end = max(t for t, label in enumerate(sample.labels) if label != IGNORE) + 1
    start = end - 1
    while start > 0 and sample.labels[start - 1] != IGNORE:
        start -= 1
    return sample.input_ids[:start], sample.input_ids[start:end]


class PreferenceEncoder:
    """Rows -> prompt and answer ids through the SFT renderer; a BadRow for each row that cannot be used."""

    def __init__(self, tokenizer: Any, data: DataSpec):
        # the length rule is a prompt with its longer answer (`fit`), so the renderer itself cuts nothing
        self.renderer = ChatRenderer(tokenizer, max_seq_len=sys.maxsize, train_on="completions", reasoning="train")
        self.max_seq_len = data.max_seq_len
        self.too_long = data.too_long

    def encode(self, rows: Sequence[Row]) -> list[Encoded | BadRow]:
        """One result per row, in order (one tokenizer call). A DataError's `index` is the row's."""
        owner = [i for i, row in enumerate(rows) for _ in row.answers]
        try:
            samples = iter(self.renderer.encode_many([[*row.prompt, a] for row in rows for a in row.answers]))
        except DataError as e:
            if isinstance(getattr(e, "index", None), int):
                e.index = owner[e.index]  # type: ignore[attr-defined]
            raise
        return [self._row([next(samples) for _ in row.answers]) for row in rows]

    def _row(self, samples: list[Sample | BadRow]) -> Encoded | BadRow:
        bad = next((s for s in samples if isinstance(s, BadRow)), None)
        if bad is not None:
            return bad
        splits = [last_turn(s) for s in samples if isinstance(s, Sample)]
        prompt = splits[0][0]
        if any(p != prompt for p, _ in splits[1:]):
            return BadRow("prompt_mismatch", "the prompt renders to different tokens before `chosen` than before "
                          "`rejected` (the tokenizer joins its last characters with an answer's first ones), so the "
                          "answers do not continue the same prompt; start the answers differently")
        answers = [a for _, a in splits]
        if len(answers) == 2 and answers[0] == answers[1]:
            return BadRow("same_answers", "`chosen` and `rejected` render to the same tokens: the pair prefers nothing")
        return self.fit(prompt, answers)

    def fit(self, prompt: list[int], answers: list[list[int]]) -> Encoded | BadRow:
        """The row within `data.max_seq_len` (a prompt with its longer answer), or why it is not."""
        room, longest = self.max_seq_len - len(prompt), max(map(len, answers))
        if longest <= room:
            return Encoded(prompt, answers)
        if room < 1:
            return BadRow("too_long", f"the prompt alone is {len(prompt)} tokens, leaving no room for an answer in "
                          f"data.max_seq_len = {self.max_seq_len}; raise data.max_seq_len or shorten the prompt")
        if self.too_long == "bad_row":
            return BadRow("too_long", f"the prompt ({len(prompt)} tokens) with its longer answer ({longest}) is "
                          f"{len(prompt) + longest} tokens, more than data.max_seq_len = {self.max_seq_len}; raise "
                          "data.max_seq_len or set data.too_long: truncate")
        cut = [a[:room] for a in answers]
        if len(cut) == 2 and cut[0] == cut[1]:
            return BadRow("same_answers", f"cut to the {room} tokens that data.max_seq_len leaves after the prompt, "
                          "`chosen` and `rejected` are the same")
        return Encoded(prompt, cut, truncated=True)


def items(encoded: Encoded, row: Row, objective: str) -> list[Item]:
    """TRL's items of one row: a pair (dpo / orpo), or one labelled row per answer (kto)."""
    if objective in PAIRED:
        chosen, rejected = encoded.answers
        return [{"prompt_ids": encoded.prompt_ids, "chosen_ids": chosen, "rejected_ids": rejected}]
    labels = [row.label] if row.label is not None else [True, False]
    return [{"prompt_ids": list(encoded.prompt_ids), "completion_ids": a, "label": label}
            for a, label in zip(encoded.answers, labels, strict=True)]


def _objective(spec: JobSpec) -> str:
    objective = spec.training.objective
    if objective == "sft" or (objective in PAIRED and spec.data.format != "preference"):
        raise DataError(f"data.format `{spec.data.format}` with training.objective `{objective}`: preference data "
                        "is read for dpo / orpo (`preference`) and kto (`preference` or `unpaired`)")
    return objective


@dataclass
class _Reader:
    """Reads a split's rows a chunk at a time into items, counting them in `tally`."""

    encoder: PreferenceEncoder
    data: DataSpec
    tally: Tally
    split: str

    def run(self, records: Iterator[Record], limit: int | None = None) -> tuple[list[Item], bool]:
        """Items of the first `limit` rows (None: all), and whether the files hold more rows than were read."""
        out: list[Item] = []
        pending: list[tuple[str, Row | BadRow]] = []
        for rec in islice(records, limit) if limit else records:
            self.tally.rows_read += 1
            pending.append((rec.location, parse_record(rec, self.data)))
            if len(pending) >= CHUNK:
                self._flush(pending, out)
        self._flush(pending, out)
        return out, bool(limit) and self.tally.rows_read == limit and next(records, None) is not None

    def _flush(self, pending: list[tuple[str, Row | BadRow]], out: list[Item]) -> None:
        rows = [(where, r) for where, r in pending if isinstance(r, Row)]
        try:
            encoded = iter(self.encoder.encode([r for _, r in rows]))
        except DataError as e:
            where = rows[e.index][0] if isinstance(getattr(e, "index", None), int) else f"data.{self.split}"
            raise DataError(f"{where}: {e}") from None
        for where, row in pending:  # in file order, so `policy: fail` names the first bad row
            result = row if isinstance(row, BadRow) else next(encoded)
            if isinstance(result, BadRow):
                self.tally.log.add(where, result)
                continue
            assert isinstance(row, Row)
            self.tally.rows_used += 1
            self.tally.truncated += result.truncated
            for item in items(result, row, self.tally.objective):
                self.tally.add(item)
                out.append(item)
        pending.clear()


def read_split(spec: JobSpec, encoder: PreferenceEncoder, files: list[SourceFile], log: BadRowLog, split: str,
               limit: int | None = None) -> tuple[list[Item], PreferenceStats, bool]:
    """Items and statistics of the first `limit` rows (None: all) of `files`; bad rows go to `log`, which raises
    under `policy: fail`. The third value: whether the files hold more rows than were read."""
    tally = Tally(_objective(spec), log)
    reader = _Reader(encoder, spec.data, tally, split)
    out, more = reader.run(read_records(files, f"data.{split}"), limit)
    return out, tally.stats(split, spec.data.max_seq_len, [f.uri for f in files]), more


def build_preference(
    spec: JobSpec,
    tokenizer: Any,
    split: Split = "train",
    *,
    base_dir: str | os.PathLike[str] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> tuple[list[Item], PreferenceStats]:
    """Items ready for TRL's preference collators (module docstring), and what reading the split did. Raises
    DataError: an empty split, no usable row, or bad rows beyond `data.bad_rows`.

    `base_dir`: folder that relative local paths in the spec are taken against (the spec's folder); unset, the
    working directory. `storage_options`: extra fsspec filesystem options."""
    data = spec.data
    files = _files(spec, split, base_dir, storage_options)
    log = BadRowLog(data.bad_rows, split)
    out, stats, _ = read_split(spec, PreferenceEncoder(tokenizer, data), files, log, split)
    names = ", ".join(f.uri for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")
    if stats.rows_read == 0:
        raise DataError(f"data.{split}: no rows at all in {names}; the files are empty")
    log.check(stats.rows_read)
    if not out:
        raise DataError(f"data.{split}: none of the {stats.rows_read} rows in {names} is usable (data.format is "
                        f"`{data.format}`).\n{log.summary()}")
    assert stats.rows_read == stats.rows_used + stats.bad_total
    return out, stats


def preferred_rows(spec: JobSpec, tokenizer: Any, split: Split = "eval", *,
                   base_dir: str | os.PathLike[str] | None = None) -> list[Any]:
    """The preferred answer of each row of a split (a pair's chosen answer; a desirable KTO row's completion) with its
    prompt, as SFT rows (`Collator` without packing): what the export's held-out loss measures on preference data."""
    items, _ = build_preference(spec, tokenizer, split, base_dir=base_dir)
    samples = [Sample(list(it["prompt_ids"]) + list(answer), [IGNORE] * len(it["prompt_ids"]) + list(answer))
               for it in items if it.get("label", True)
               for answer in (it.get("chosen_ids", it.get("completion_ids")),)]
    return unpacked(samples)
