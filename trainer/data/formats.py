"""Row -> conversation: `[{"role": "system" | "user" | "assistant", "content": str}, ...]`.

One function per `data.format`:
- `messages`: OpenAI chat, `{"messages": [{"role", "content"}]}`; content may also be a list of
  `{"type": "text", "text"}` parts.
- `sharegpt`: `{"conversations": [{"from": "human" | "gpt" | "system", "value"}]}`.

In both, an assistant turn may carry its reasoning (chain of thought) in `thinking` (the key
gpt-oss's Harmony template reads) or `reasoning_content` (the key Qwen3's and DeepSeek's read):
a string, on assistant turns only. It is passed to the chat template under both keys, so either
spelling reaches whichever key the template reads (see trainer/data/render.py for what is trained).
- `instruction`: alpaca columns (`data.columns`); a non-empty input is appended to the
  instruction after a blank line.
- `template`: `data.template` strings with `{field}` placeholders (string.Formatter syntax,
  `{a.b}` reads nested objects, `{{` is a literal brace).

`data.system_prompt` is added to conversations that have no system message (formats other than
`template`, whose own `system` string does that job). A row that cannot be used raises BadRow
with a reason key and a message saying what is wrong. No torch here: the launcher imports it.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from typing import Any

from trainer.data.errors import BadRow
from trainer.spec.data import DataSpec

Message = dict[str, str]
REASONING_KEYS = ("thinking", "reasoning_content")
ROLES = ("system", "user", "assistant")
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "chatgpt": "assistant",
}


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts
        parts = []
        for i, part in enumerate(value):
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise BadRow("bad_type", f"{where}[{i}] is not a text part ({{'type': 'text', 'text': ...}})")
            parts.append(part["text"])
        return "".join(parts)
    if value is None:
        raise BadRow("missing_field", f"{where} is missing")
    raise BadRow("bad_type", f"{where} must be a string, got {type(value).__name__}")


def _turns(row: Mapping[str, Any], key: str, role_key: str, text_key: str, roles: Mapping[str, str]) -> list[Message]:
    turns = row.get(key)
    if turns is None:
        raise BadRow("missing_field", f"no `{key}` field (found: {', '.join(map(str, row)) or 'nothing'})")
    if not isinstance(turns, list):
        raise BadRow("bad_type", f"`{key}` must be a list of turns, got {type(turns).__name__}")
    if not turns:
        raise BadRow("empty_conversation", f"`{key}` is empty")
    out: list[Message] = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, Mapping):
            raise BadRow("bad_type", f"{where} must be an object with `{role_key}` and `{text_key}`")
        raw_role = turn.get(role_key)
        if raw_role is None:
            raise BadRow("missing_field", f"{where}.{role_key} is missing")
        role = roles.get(str(raw_role).lower()) if isinstance(raw_role, str) else None
        if role is None:
            raise BadRow("bad_role", f"{where}.{role_key} is {raw_role!r}; use one of {', '.join(roles)}")
        message = {"role": role, "content": _text(turn.get(text_key), f"{where}.{text_key}")}
        reasoning = _reasoning(turn, where, role)
        if reasoning is not None:
            message.update(dict.fromkeys(REASONING_KEYS, reasoning))
        out.append(message)
    return out


def _reasoning(turn: Mapping[str, Any], where: str, role: str) -> str | None:
    """The turn's `thinking` / `reasoning_content` (None when it has neither)."""
    given = {k: turn[k] for k in REASONING_KEYS if turn.get(k) is not None}
    if not given:
        return None
    for key, value in given.items():
        if role != "assistant":
            raise BadRow("bad_role", f"{where}.{key}: only assistant turns carry reasoning, this is a {role} turn; "
                         "move it to the assistant turn it belongs to, or remove it")
        if not isinstance(value, str):
            raise BadRow("bad_type", f"{where}.{key} must be a string (the reasoning text), got {type(value).__name__}")
    if len(set(given.values())) > 1:
        raise BadRow("bad_type", f"{where} has both `thinking` and `reasoning_content`, with different text; keep one")
    return next(iter(given.values()))


def _messages(row: Mapping[str, Any], data: DataSpec) -> list[Message]:
    return _turns(row, "messages", "role", "content", {r: r for r in ROLES})


def _sharegpt(row: Mapping[str, Any], data: DataSpec) -> list[Message]:
    return _turns(row, "conversations", "from", "value", SHAREGPT_ROLES)


def _column(row: Mapping[str, Any], name: str, optional: bool = False) -> str:
    value = row.get(name)
    if value is None:
        if optional:
            return ""
        found = ", ".join(map(str, row)) or "nothing"
        raise BadRow("missing_field", f"no `{name}` column (found: {found}); set data.columns if it is named differently")
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise BadRow("bad_type", f"`{name}` must be text, got {type(value).__name__}")
    return str(value)


def _instruction(row: Mapping[str, Any], data: DataSpec) -> list[Message]:
    cols = data.columns
    prompt = _column(row, cols.instruction)
    extra = _column(row, cols.input, optional=True)
    if extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": _column(row, cols.output)}]


class _RowFormatter(string.Formatter):
    """`{field}`, `{a.b}` (nested objects) and `{a[0]}`; a missing or null field is a BadRow."""

    def get_field(self, field_name: str, args: Any, kwargs: Any) -> tuple[Any, str]:
        head, *rest = field_name.split(".")
        obj = super().get_field(head, args, kwargs)[0] if head else None
        path = head
        for part in rest:
            path += f".{part}"
            if not isinstance(obj, Mapping) or part not in obj:
                raise BadRow("missing_field", f"the template needs `{path}`, which the row lacks")
            obj = obj[part]
        if obj is None:
            raise BadRow("missing_field", f"the template needs `{field_name}`, which is null in the row")
        if isinstance(obj, (list, Mapping)):
            kind = "a list" if isinstance(obj, list) else "an object"
            raise BadRow("bad_type", f"the template's `{{{field_name}}}` is {kind} in the row, not text: write it "
                         f"into a text field first (e.g. a list joined with newlines), or pick one item (`{{{head}[0]}}`)")
        return obj, head

    def get_value(self, key: int | str, args: Any, kwargs: Any) -> Any:
        if isinstance(key, int) or key not in kwargs:
            found = ", ".join(map(str, kwargs)) or "nothing"
            raise BadRow("missing_field", f"the template needs `{key}`, which the row lacks (found: {found})")
        return kwargs[key]


_FORMATTER = _RowFormatter()


def fill(template: str, row: Mapping[str, Any]) -> str:
    try:
        return _FORMATTER.vformat(template, (), row)
    except (IndexError, KeyError, TypeError, ValueError) as e:
        raise BadRow(
            "missing_field", f"data.template cannot be filled from this row ({type(e).__name__}: {e}); check data.template"
        ) from None


def _template(row: Mapping[str, Any], data: DataSpec) -> list[Message]:
    tpl = data.template
    assert tpl is not None  # the spec guarantees it with format: template
    out: list[Message] = []
    if tpl.system is not None:
        out.append({"role": "system", "content": fill(tpl.system, row)})
    out.append({"role": "user", "content": fill(tpl.user, row)})
    out.append({"role": "assistant", "content": fill(tpl.assistant, row)})
    return out


FORMATS: dict[str, Callable[[Mapping[str, Any], DataSpec], list[Message]]] = {
    "messages": _messages,
    "sharegpt": _sharegpt,
    "instruction": _instruction,
    "template": _template,
}


def check(messages: list[Message]) -> list[Message]:
    """Rules for every format: blank system messages are dropped; user and assistant turns must
    have text; at least one assistant turn."""
    out = [m for m in messages if m["role"] != "system" or m["content"].strip()]
    if not out:
        raise BadRow("empty_conversation", "the conversation has no messages with text")
    for i, m in enumerate(out):
        if not m["content"].strip():
            raise BadRow("empty_content", f"the {m['role']} turn #{i + 1} is empty")
    if not any(m["role"] == "assistant" for m in out):
        raise BadRow("no_assistant_turn", "no assistant turn: there is nothing to learn from this row")
    return out


def to_messages(row: Mapping[str, Any], data: DataSpec) -> list[Message]:
    """The conversation of one row, per `data.format`; raises BadRow."""
    messages = FORMATS[data.format](row, data)
    if data.system_prompt and data.format != "template" and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": data.system_prompt})
    return check(messages)
