"""An assistant turn's reasoning and answer, and where the chat template puts them.

Reasoning comes either from a field of the message (`thinking`, which gpt-oss's template
reads, or `reasoning_content`, which Qwen3's reads; `trainer.data.formats` sets both) or from
the content itself, written as `<think>reasoning</think>answer` (DeepSeek-R1 / Qwen3 style);
the answer is then the text after the last `</think>`.

Templates transform those texts (drop reasoning from earlier turns, split on `</think>`, strip
newlines), so the renderer finds them by rendering the conversation a second time with each
answer's and each reasoning's text (without its surrounding whitespace, which templates strip)
replaced by a unique marker. Putting the real texts back in place of the markers must give the
real rendering character for character; then every marker's position is the position of its
text in the real rendering, and a marker that is missing is a text the template dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from trainer.data.formats import REASONING_KEYS, Message

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


@dataclass(frozen=True)
class Parts:
    reasoning: str  # without surrounding whitespace; "" when the turn has none
    answer: str  # without surrounding whitespace


def _split_think(content: str) -> tuple[str, str, str] | None:
    """`<think>R</think>A` -> (text before R's body, R's body, A); None without `</think>`."""
    k = content.rfind(THINK_CLOSE)
    if k < 0:
        return None
    before, after = content[:k], content[k + len(THINK_CLOSE):]
    j = before.find(THINK_OPEN)
    head = before[: j + len(THINK_OPEN)] if j >= 0 else ""
    return head, before[len(head):], after


def parts(m: Message) -> Parts:
    field = next((m[k] for k in REASONING_KEYS if k in m), None)
    if field is not None:
        return Parts(field.strip(), m["content"].strip())
    split = _split_think(m["content"])
    if split is None:
        return Parts("", m["content"].strip())
    _, body, after = split
    return Parts(body.strip(), after.strip())


def _mark(text: str, marker: str) -> str:
    """`text` with its stripped core replaced by `marker` (whitespace kept); unchanged when blank."""
    core = text.strip()
    if not core:
        return text
    lead = len(text) - len(text.lstrip())
    return text[:lead] + marker + text[lead + len(core):]


class Markers:
    """Marked copies of a conversation and the way back to real positions."""

    def __init__(self, messages: Sequence[Message], avoid: str):
        base = "kubetune-marker"
        while base in avoid:
            base += "x"
        self.pattern = re.compile(rf"\[{re.escape(base)}:([ar])(\d+)\]")
        self.texts: dict[tuple[str, int], str] = {}
        self.messages: list[Message] = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                self.messages.append(m)
                continue
            ans, rea = f"[{base}:a{i}]", f"[{base}:r{i}]"
            p = parts(m)
            self.texts[("a", i)] = p.answer
            copy = dict(m)
            if p.reasoning:
                self.texts[("r", i)] = p.reasoning
            if any(k in m for k in REASONING_KEYS):
                copy["content"] = _mark(m["content"], ans)
                for k in REASONING_KEYS:
                    if k in m:
                        copy[k] = _mark(m[k], rea)
            else:
                split = _split_think(m["content"])
                if split is None:
                    copy["content"] = _mark(m["content"], ans)
                else:
                    head, body, after = split
                    copy["content"] = head + _mark(body, rea) + THINK_CLOSE + _mark(after, ans)
            self.messages.append(copy)

    def positions(self, marked: str, full: str) -> dict[tuple[str, int], list[tuple[int, int]]] | None:
        """Each marker's spans in `full`; None when putting the texts back does not give `full`
        (the template changes the texts in some other way)."""
        out: dict[tuple[str, int], list[tuple[int, int]]] = {}
        pieces: list[str] = []
        n = last = 0
        for m in self.pattern.finditer(marked):
            key = (m.group(1), int(m.group(2)))
            if key not in self.texts:
                return None
            pieces.append(marked[last : m.start()])
            n += m.start() - last
            text = self.texts[key]
            out.setdefault(key, []).append((n, n + len(text)))
            pieces.append(text)
            n += len(text)
            last = m.end()
        pieces.append(marked[last:])
        return out if "".join(pieces) == full else None
