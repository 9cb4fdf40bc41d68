"""`launch data validate`: what a spec's data turns into, before any GPU time is spent.

Rows are read through the spec's own sources, format, chat template and tokenizer (the trainer's
`trainer.data` steps, the same ones `build_dataset` chains), and the report says: rows read, used
and bad by reason with examples (file:line), the token length distribution of the samples, the
share of tokens that will be trained and how full packed rows will be. A split fails (exit 2)
when it is empty, when every row is bad, or when bad rows break `data.bad_rows`.

`precheck` is the cheap part, run by `launch submit --local` before anything starts: rows
through the format only (no tokenizer), on the first PRECHECK_ROWS rows of each local split.

The tokenizer (transformers) is imported only by `validate`; this module itself stays light.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from launcher.errors import UserError
from trainer import storage
from trainer.data.badrows import BadRowLog
from trainer.data.encode import CHUNK, Located, conversation, encode_chunk
from trainer.data.errors import BadRow, DataError
from trainer.data.preference_rows import PREFERENCE_FORMATS, parse_record
from trainer.data.sources import expand, read_records
from trainer.data.stats import REASONING_DROPPED
from trainer.model.tokenizer import open_tokenizer, read_chat_template
from trainer.spec.data import BadRowsSpec
from trainer.spec.job import JobSpec

PRECHECK_ROWS = 1000
PERCENTILES = (50, 90, 99)


@dataclass
class SplitReport:
    split: str
    files: list[str]
    rows_read: int
    rows_used: int
    sampled: bool  # stopped after `--sample` rows: the file(s) hold more
    bad_rows: dict[str, int]
    bad_examples: list[str]
    lengths: dict[str, int]  # min, p50, p90, p99, max tokens per sample
    max_seq_len: int
    tokens_total: int
    tokens_trained: int
    truncated: int
    packing: bool
    packed_rows: int
    packing_efficiency: float
    problems: list[str] = field(default_factory=list)
    reasoning_dropped_turns: int = 0  # assistant turns whose reasoning the chat template does not render
    warnings: list[str] = field(default_factory=list)  # what would not stop the job but makes it worse

    @property
    def trained_share(self) -> float:
        return self.tokens_trained / self.tokens_total if self.tokens_total else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "trained_share": round(self.trained_share, 4),
                "packing_efficiency": round(self.packing_efficiency, 4)}

    def lines(self) -> list[str]:
        bad = sum(self.bad_rows.values())
        head = f"data.{self.split}: {len(self.files)} file(s), {self.rows_read} rows read"
        head += " (--sample: the first rows only)" if self.sampled else ""
        out = [f"{head}, {self.rows_used} used, {bad} bad"]
        if bad:
            out.append("  bad rows: " + ", ".join(f"{r} {n}" for r, n in sorted(self.bad_rows.items(), key=lambda x: -x[1])))
            out += [f"    {e}" for e in self.bad_examples]
        if self.rows_used:
            dist = "  ".join(f"{k} {v}" for k, v in self.lengths.items())
            out.append(f"  tokens per sample: {dist}  (data.max_seq_len {self.max_seq_len})")
            if self.truncated:
                out.append(f"  truncated to data.max_seq_len: {self.truncated} sample(s)")
            if self.reasoning_dropped_turns:
                out.append(f"  {REASONING_DROPPED.format(n=self.reasoning_dropped_turns)}")
            out.append(f"  trained tokens: {self.tokens_trained} of {self.tokens_total} ({self.trained_share:.1%})")
            layout = (f"{self.rows_used} samples into {self.packed_rows} packed rows of {self.max_seq_len}"
                      if self.packing else f"{self.rows_used} samples, one per row of up to {self.max_seq_len}")
            out.append(f"  packing: {layout}, {self.packing_efficiency:.1%} of the row budget holds tokens")
        out += [f"  warning: {w}" for w in self.warnings]
        out += [f"  problem: {p}" for p in self.problems]
        return out


def percentile(sorted_values: list[int], p: float) -> int:
    """Nearest-rank percentile of a sorted, non-empty list."""
    return sorted_values[max(0, math.ceil(p / 100 * len(sorted_values)) - 1)]


def distribution(lengths: list[int]) -> dict[str, int]:
    if not lengths:
        return {}
    s = sorted(lengths)
    return {"min": s[0], **{f"p{p}": percentile(s, p) for p in PERCENTILES}, "max": s[-1]}


def policy_problems(split: str, rows_read: int, bad: int, spec: BadRowsSpec, names: str) -> list[str]:
    """Why this split would stop the job: empty, all bad, or more bad rows than `data.bad_rows` allows."""
    if rows_read == 0:
        return [f"data.{split} is empty: no rows in {names}; write the data first, or point data.{split} at it"]
    if bad == rows_read:
        return [f"data.{split}: every one of the {rows_read} rows is bad; check data.format (and data.columns / "
                "data.template) against the rows shown above"]
    if bad and spec.policy == "fail":
        return [f"data.{split}: {bad} bad row(s) and data.bad_rows.policy is fail: the first stops the job; fix them "
                "or set data.bad_rows.policy: skip"]
    if bad / rows_read > spec.max_bad_fraction:
        return [f"data.{split}: {bad} of {rows_read} rows are bad ({bad / rows_read:.2%}), more than "
                f"data.bad_rows.max_bad_fraction = {spec.max_bad_fraction:g}; fix the rows, or raise the fraction "
                "if losing them is acceptable"]
    return []


def _names(files: list[Any]) -> str:
    return ", ".join(f.uri for f in files[:3]) + (f" and {len(files) - 3} more" if len(files) > 3 else "")


def _files(spec: JobSpec, split: str, spec_dir: Path) -> list[Any]:
    try:
        return expand(getattr(spec.data, split), None, spec_dir, field=f"data.{split}")
    except DataError as e:
        raise UserError(str(e)) from None


@dataclass
class _Tally:
    """What the rows of one split read so far add up to: bad rows by reason, and the encoded samples' lengths,
    trained and truncated tokens, and assistant turns whose reasoning the template dropped."""

    log: BadRowLog
    lengths: list[int] = field(default_factory=list)
    rows: int = 0
    trained: int = 0
    truncated: int = 0
    dropped: int = 0

    def encode(self, renderer: Any, pending: list[Located], split: str) -> None:
        """Encode a chunk of pending rows and count them in; `pending` is emptied."""
        try:
            results = encode_chunk(renderer, pending, split)
        except DataError as e:
            raise UserError(str(e)) from None
        for (location, _), result in zip(pending, results, strict=True):
            if isinstance(result, BadRow):
                self.log.add(location, result)
            else:
                self.lengths.append(len(result.input_ids))
                self.trained += result.trained
                self.truncated += result.truncated
                self.dropped += result.reasoning_dropped
        pending.clear()


def split_report(spec: JobSpec, split: str, tokenizer: Any, spec_dir: Path, sample: int | None) -> SplitReport:
    """Read `sample` rows (None: all) of one split through format, template and tokenizer."""
    from trainer.data import packing as pk

    data = spec.data
    files = _files(spec, split, spec_dir)
    renderer = _renderer(spec, tokenizer)
    tally = _Tally(BadRowLog(BadRowsSpec(policy="skip", max_bad_fraction=1.0), split))  # the policy is judged below
    sampled = _read(tally, renderer, spec, split, files, sample)
    lengths, rows = tally.lengths, tally.rows
    bins = pk.best_fit_decreasing(lengths, data.max_seq_len) if data.packing else [[i] for i in range(len(lengths))]
    return SplitReport(
        split=split, files=[f.uri for f in files], rows_read=rows, rows_used=len(lengths), sampled=sampled,
        bad_rows=dict(tally.log.counts), bad_examples=list(tally.log.examples), lengths=distribution(lengths),
        max_seq_len=data.max_seq_len, tokens_total=sum(lengths), tokens_trained=tally.trained,
        truncated=tally.truncated, packing=data.packing, packed_rows=len(bins),
        packing_efficiency=pk.efficiency(sum(lengths), len(bins), data.max_seq_len),
        problems=policy_problems(split, rows, tally.log.total, data.bad_rows, _names(files)),
        reasoning_dropped_turns=tally.dropped,
    )


def _renderer(spec: JobSpec, tokenizer: Any) -> Any:
    """The trainer's ChatRenderer for the spec's data settings (a UserError naming the base model if it refuses)."""
    from trainer.data.render import ChatRenderer

    data = spec.data
    try:
        return ChatRenderer(tokenizer, max_seq_len=data.max_seq_len, train_on=data.train_on, too_long=data.too_long,
                            reasoning=data.reasoning)
    except DataError as e:
        raise UserError(f"{spec.base_model}: {e}") from None


def _read(tally: _Tally, renderer: Any, spec: JobSpec, split: str, files: list[Any], sample: int | None) -> bool:
    """Read `sample` rows (None: all) of the split's files into `tally`, a chunk at a time; whether the files
    hold more rows than were read."""
    records = read_records(files, f"data.{split}")
    limited = islice(records, sample) if sample else records
    pending: list[Located] = []
    try:
        for rec in limited:
            tally.rows += 1
            pending.append((rec.location, conversation(rec, spec.data)))
            if len(pending) >= CHUNK:
                tally.encode(renderer, pending, split)
        tally.encode(renderer, pending, split)
        return bool(sample) and tally.rows == sample and next(records, None) is not None
    except DataError as e:
        raise UserError(str(e)) from None


def load_tokenizer(spec: JobSpec, spec_dir: Path, override: str | None = None) -> Any:
    """The base model's tokenizer (or `--tokenizer PATH`'s), with `model.chat_template` applied."""
    source = override or spec.base_model
    where = "--tokenizer" if override else "base_model"
    if storage.is_remote(source):
        raise UserError(f"{where} {source}: validating reads the tokenizer from this machine; pass --tokenizer "
                        "PATH (a local model folder or .gguf with the same tokenizer)")
    path = Path(storage.local_path(source, Path.cwd() if override else spec_dir))
    template = read_chat_template(spec.model.chat_template, spec_dir) if spec.model.chat_template else None
    trust = spec.model.trust_remote_code
    try:
        if source.lower().endswith(".gguf"):
            if not path.is_file():
                raise UserError(f"{where} {source}: no such file ({path})")
            return open_tokenizer(str(path.parent), gguf_file=path.name, chat_template=template)
        if path.is_dir():
            return open_tokenizer(str(path), trust_remote_code=trust, chat_template=template)
        if source.count("/") == 1 and not source.startswith((".", "/", "~", "file://")):
            try:
                return open_tokenizer(source, local_files_only=True, trust_remote_code=trust, chat_template=template)
            except OSError:
                raise UserError(f"base_model {source}: its tokenizer is not in this machine's Hugging Face cache; "
                                "pass --tokenizer PATH (a local model folder or .gguf with the same tokenizer), or "
                                f"download it first (`hf download {source}`)") from None
        raise UserError(f"{where} {source}: no such folder or .gguf file ({path})")
    except (OSError, ValueError) as e:
        raise UserError(f"{where} {source}: cannot load a tokenizer from it: {e}") from None


def validate(spec: JobSpec, spec_dir: Path, sample: int | None = None, tokenizer: str | None = None) -> list[Any]:
    """A SplitReport per split; for preference data (`data.format: preference | unpaired`) a PreferenceReport."""
    from datetime import date

    from trainer.data import template_date

    # the date `launch submit` would record: the spec's own, else today's
    tok = template_date.pin(load_tokenizer(spec, spec_dir, tokenizer), spec.data.template_date or date.today())
    splits = ["train"] + (["eval"] if spec.data.eval is not None else [])
    if spec.data.format in PREFERENCE_FORMATS:
        from launcher.datacheck_preference import preference_report

        reports: list[Any] = [preference_report(spec, s, tok, spec_dir, sample) for s in splits]
    else:
        reports = [split_report(spec, s, tok, spec_dir, sample) for s in splits]
    if warning := eval_room(spec, tok, spec_dir):
        reports[-1 if spec.data.eval else 0].warnings.append(warning)  # the split the references come from
    return reports


def eval_room(spec: JobSpec, tokenizer: Any, spec_dir: Path) -> str | None:
    """A warning when `eval.max_new_tokens` is shorter than reference replies that sample answers and
    `eval.metrics` are compared to (trainer/eval/room.py), or None."""
    from trainer.eval.room import held_out_conversations, reply_lengths, too_short

    try:
        convs, where = held_out_conversations(spec, spec_dir)
    except DataError:  # the split's report has said what is wrong with its files
        return None
    return too_short(reply_lengths(convs, tokenizer), spec.eval.max_new_tokens, where)


def precheck(spec: JobSpec, spec_dir: Path) -> list[str]:
    """Cheap checks of the local data before a job starts: the first PRECHECK_ROWS rows of each split
    through the format (no tokenizer). Remote data is left to the trainer."""
    problems: list[str] = []
    for split in ("train", "eval"):
        uris = getattr(spec.data, split)
        if uris is None or any(storage.is_remote(u) for u in ([uris] if isinstance(uris, str) else uris)):
            continue
        files = _files(spec, split, spec_dir)
        rows = bad = 0
        check = parse_record if spec.data.format in PREFERENCE_FORMATS else conversation
        try:
            for rec in islice(read_records(files, f"data.{split}"), PRECHECK_ROWS):
                rows += 1
                bad += isinstance(check(rec, spec.data), BadRow)
        except DataError as e:
            problems.append(str(e))
            continue
        found = policy_problems(split, rows, bad, spec.data.bad_rows, _names(files))
        if found and rows == PRECHECK_ROWS:
            found = [f"{p} (in its first {PRECHECK_ROWS} rows)" for p in found]
        problems += [f"{p}; `launch data validate` shows the rows" for p in found]
    return problems
