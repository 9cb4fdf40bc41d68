"""Preference rows -> a prompt and its answers: `data.format: preference` and `unpaired` (KTO).

- `preference`: `{prompt, chosen, rejected}`. `prompt` is a string (one user turn) or a list of
  `{role, content}` messages (a system turn and earlier user / assistant turns allowed) ending with a
  user turn; `chosen` and `rejected` are a string (the assistant's answer) or a list holding the one
  assistant message (`thinking` / `reasoning_content` accepted, as in `data.format: messages`).
  TRL's implicit prompt: no `prompt`, and `chosen` / `rejected` whole conversations that share
  every message but the last, the assistant's answer.
- `unpaired`: `{prompt, completion, label}`, the same forms, `label` true (a desirable completion) or
  false; no `prompt` and a whole conversation in `completion` works as above.

`data.system_prompt` is added to prompts that have none. A row that cannot be used raises BadRow
(trainer/data/formats.py's message checks, and `same_answers` / `prompt_mismatch`). No torch here:
the launcher checks rows with it (`launch data validate`, `launch submit --local`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainer.data.errors import BadRow
from trainer.data.formats import REASONING_KEYS, ROLES, Message, _turns
from trainer.data.records import Record
from trainer.spec.data import DataSpec

PREFERENCE_FORMATS = ("preference", "unpaired")
ANSWERS = {"preference": ("chosen", "rejected"), "unpaired": ("completion",)}
_ROLES = {r: r for r in ROLES}


@dataclass(frozen=True)
class Row:
    """One usable row: the prompt turns (ending with a user turn) and the answers to it, each one assistant
    message: (chosen, rejected), or (completion,) with its `label`."""

    prompt: list[Message]
    answers: tuple[Message, ...]
    label: bool | None = None


def _messages(row: Mapping[str, Any], key: str) -> list[Message]:
    return _turns(row, key, "role", "content", _ROLES)


def _prompt(row: Mapping[str, Any]) -> list[Message]:
    value = row.get("prompt")
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if value is None:
        found = ", ".join(map(str, row)) or "nothing"
        raise BadRow("missing_field", f"no `prompt` field (found: {found})")
    if not isinstance(value, list):
        raise BadRow("bad_type", f"`prompt` must be text or a list of {{role, content}} messages, got "
                     f"{type(value).__name__}")
    return _messages(row, "prompt")


def _answer(row: Mapping[str, Any], key: str) -> Message:
    value = row.get(key)
    if isinstance(value, str):
        return {"role": "assistant", "content": value}
    if value is None:
        raise BadRow("missing_field", f"no `{key}` field (found: {', '.join(map(str, row)) or 'nothing'})")
    if not isinstance(value, list):
        raise BadRow("bad_type", f"`{key}` must be text or a list holding the assistant's message, got "
                     f"{type(value).__name__}")
    turns = _messages(row, key)
    if len(turns) != 1:
        raise BadRow("bad_type", f"`{key}` holds {len(turns)} messages; it must hold one, the assistant's answer "
                     "(earlier turns belong in `prompt`)")
    return _assistant(turns[0], key)


def _assistant(message: Message, key: str) -> Message:
    if message["role"] != "assistant":
        raise BadRow("bad_role", f"`{key}`'s answer is a {message['role']} turn; it must be the assistant's")
    return message


def _implicit(row: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[list[Message], list[Message]]:
    """TRL's implicit prompt: the messages every answer's conversation shares before its last one."""
    convs = [_messages(row, k) for k in keys]
    answers = [_assistant(c[-1], k) for k, c in zip(keys, convs, strict=True)]
    prompt = convs[0][:-1]
    if any(c[:-1] != prompt for c in convs[1:]):
        raise BadRow("prompt_mismatch", f"no `prompt` field, and {' and '.join(f'`{k}`' for k in keys)} differ "
                     "before their last message: as TRL's implicit prompt they must share every message but the "
                     "last (the assistant's answer)")
    if not prompt:
        raise BadRow("missing_field", f"no `prompt` field, and `{keys[0]}` has no message before its answer")
    return prompt, answers


def _check_prompt(prompt: list[Message], data: DataSpec) -> list[Message]:
    if data.system_prompt and not any(m["role"] == "system" for m in prompt):
        prompt = [{"role": "system", "content": data.system_prompt}, *prompt]
    prompt = [m for m in prompt if m["role"] != "system" or m["content"].strip()]
    if not prompt:
        raise BadRow("empty_content", "the prompt has no messages with text")
    for i, m in enumerate(prompt):
        if not m["content"].strip():
            raise BadRow("empty_content", f"the prompt's {m['role']} turn #{i + 1} is empty")
    if prompt[-1]["role"] != "user":
        raise BadRow("bad_role", f"the prompt ends with the {prompt[-1]['role']}'s turn; it must end with the user "
                     "turn that the answers reply to")
    return prompt


def _same(a: Message, b: Message) -> bool:
    return all(a.get(k, "").strip() == b.get(k, "").strip() for k in ("content", *REASONING_KEYS))


def parse(row: Mapping[str, Any], data: DataSpec) -> Row:
    """The prompt and answers of one row, per `data.format` (`preference` or `unpaired`); raises BadRow."""
    keys = ANSWERS[data.format]
    if row.get("prompt") is None and all(isinstance(row.get(k), list) and len(row[k]) > 1 for k in keys):
        prompt, answers = _implicit(row, keys)
    else:
        prompt, answers = _prompt(row), [_answer(row, k) for k in keys]
    prompt = _check_prompt(prompt, data)
    for key, answer in zip(keys, answers, strict=True):
        if not answer["content"].strip():
            raise BadRow("empty_content", f"`{key}` is empty")
    if len(answers) == 2 and _same(*answers):
        raise BadRow("same_answers", "`chosen` and `rejected` are the same answer: the pair prefers nothing")
    label = None
    if data.format == "unpaired":
        label = row.get("label")
        if label is None:
            raise BadRow("missing_field", "no `label` field: true for a desirable completion, false otherwise")
        if not isinstance(label, bool):
            raise BadRow("bad_type", f"`label` must be true (a desirable completion) or false, got {label!r}")
    return Row(prompt, tuple(answers), label)


def parse_record(rec: Record, data: DataSpec) -> Row | BadRow:
    """`parse` of a record read from a file, or the BadRow that reading or parsing it gave."""
    if rec.error is not None:
        return rec.error
    assert rec.row is not None
    try:
        return parse(rec.row, data)
    except BadRow as bad:
        return bad


def prompt_turns(rec: Record, data: DataSpec) -> list[Message] | BadRow:
    """A preference row as one conversation: its prompt (ending with its user turn) and the preferred answer (the
    chosen one, or a desirable completion) when it has one. Sample answers are asked the prompt, with that answer as
    the reference; the export's checks render the whole conversation."""
    parsed = parse_record(rec, data)
    if isinstance(parsed, BadRow):
        return parsed
    preferred = parsed.label is None or parsed.label
    return [*parsed.prompt, parsed.answers[0]] if preferred else parsed.prompt
