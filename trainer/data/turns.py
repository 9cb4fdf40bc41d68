"""Where each assistant turn sits in a rendered conversation: `TemplateTurns`, the half of
`ChatRenderer` (trainer/data/render.py) that renders a conversation through the chat template,
finds the character spans to train in the text (`spans`) and checks how each trained turn ends
(`endings`). render.py says what is trained; this module how the text is searched for it.

Most templates have no `{% generation %}` markers, so turns are found by rendering. For
assistant message i:
  start = where `render(messages[:i], add_generation_prompt=True)` stops agreeing with the full
          render: normally its whole length (Gemma 4's generation prompt also opens an empty
          thought channel that the rendered history lacks, so the span starts before it);
  answer = where the turn's answer text sits in the full render, found by rendering once more
          with every answer and reasoning text replaced by a marker (trainer/data/reasoning.py);
  end   = right after the first special token that follows the answer (only whitespace
          between): `<|eot_id|>`, `<|im_end|>`, `<|end|>`, `<|return|>` ... Phi-3 writes `<|end|>`
          then, after the last turn only, EOS: the turn ends at `<|end|>`, where generation stops.
          A template that closes turns with plain text: where `render(messages[:i + 1])` stops
          agreeing with the full render, less trailing whitespace.
Divergence points are moved back to the start of a special token the character-level split
cuts through (`<|endoftext|>` vs `<|user|>` agree on `<|`). When the marked render cannot be
mapped back (a template that changes the texts beyond stripping whitespace), the spans come from
prefix renders alone, as above, for conversations without reasoning.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date
from typing import Any

from trainer.data import reasoning as rz
from trainer.data import template_date
from trainer.data.errors import BadRow, DataError
from trainer.data.formats import Message

MarkerSpans = dict[tuple[str, int], list[tuple[int, int]]]  # each marker's spans in the full render (`rz.Markers`)


def _common_prefix(a: str, b: str) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


class TemplateTurns:
    """Rendering and turn spans; `ChatRenderer` sets these attributes."""

    tok: Any
    reasoning: str
    specials: tuple[str, ...]  # special and added tokens, longest first
    special_re: re.Pattern[str] | None
    longest_special: int
    day: date  # the date templates render with (template_date)
    stops: list[str]  # tokens generation stops on (render.stop_tokens)

    def render(self, messages: Sequence[Message], generation_prompt: bool = False) -> str:
        try:
            text = template_date.apply_chat_template(
                self.tok, self.day, list(messages), tokenize=False, add_generation_prompt=generation_prompt
            )
        except Exception as e:  # noqa: BLE001 - jinja TemplateError from raise_exception, or a template bug
            raise BadRow("template_error", f"the chat template refused this conversation: {e}") from None
        assert isinstance(text, str)
        return text

    def _diverge(self, a: str, full: str) -> int:
        """Where `a` stops agreeing with `full`, moved back to the start of a special token that
        the character-level split cuts (`<|endoftext|>` vs `<|user|>` agree on `<|`)."""
        p = _common_prefix(a, full)
        if self.special_re is None:
            return p
        for text in (a, full):
            lo = max(0, p - self.longest_special)
            for m in self.special_re.finditer(text, lo, p + self.longest_special):
                if m.start() < p < m.end():
                    return m.start()
        return p

    def _trim_end(self, text: str, start: int, end: int) -> int:
        """Drop whitespace the template writes after the end-of-turn token."""
        stripped = text[start:end].rstrip()
        if stripped.endswith(self.specials):
            return start + len(stripped)
        return end

    def _content_end(self, full: str, start: int, content: str) -> int:
        """For templates that render the last turn unlike a past one (Qwen3 adds an empty think
        block to the last assistant turn only): the turn is its content, found right at `start`,
        plus the end-of-turn token after it. -1 when the content is not there."""
        p = full.find(content, start)
        if p < 0 or full[start:p].strip():
            return -1
        end = p + len(content)
        after = end + len(full[end:]) - len(full[end:].lstrip())
        token = next((t for t in self.specials if full.startswith(t, after)), None)
        return after + len(token) if token else end

    def _special_end(self, full: str, pos: int) -> int:
        """Right after the special token at `pos` (whitespace skipped); -1 when none is there."""
        after = pos + len(full[pos:]) - len(full[pos:].lstrip())
        token = next((t for t in self.specials if full.startswith(t, after)), None)
        return after + len(token) if token else -1

    def _rewritten(self, i: int, why: str) -> DataError:
        return DataError(
            f"the chat template renders assistant turn #{i + 1} differently once later turns follow ({why}), so "
            "the tokens to train on cannot be located. Use a template that renders history unchanged or only drops "
            "reasoning from it (gpt-oss, Qwen3, DeepSeek-R1 do), or train on single-turn rows (one assistant turn "
            "at the end)."
        )

    def spans(self, messages: Sequence[Message]) -> tuple[str, list[tuple[int, int]], int]:
        """The full text, the character spans to train in it, and how many assistant turns' reasoning the
        template dropped."""
        full = self.render(messages)
        markers = rz.Markers(messages, full)
        where = markers.positions(self.render(markers.messages), full)
        if where is None:
            if any(rz.parts(m).reasoning for m in messages if m["role"] == "assistant"):
                raise DataError(
                    "the chat template changes assistant texts (beyond stripping whitespace), so the reasoning and "
                    "the answer of a turn cannot be told apart in its output; use a template that writes them as "
                    "given (model.chat_template), or remove the reasoning"
                )
            return full, self._prefix_spans(messages, full), 0
        spans: list[tuple[int, int]] = []
        dropped = 0
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start, end, drop = self._turn_span(messages, i, full, where)
            dropped += drop
            if spans and start < spans[-1][1]:
                raise self._rewritten(i, "it overlaps the turn before it")
            spans.append((start, end))
        return full, spans, dropped

    def _turn_span(self, messages: Sequence[Message], i: int, full: str, where: MarkerSpans) -> tuple[int, int, int]:
        """Assistant turn `i`'s span in `full` (start, end), and 1 when the template dropped its reasoning."""
        m = messages[i]
        start = self._diverge(self.render(messages[:i], generation_prompt=True), full)
        found = where.get(("a", i), [])
        if len(found) != 1:
            raise self._rewritten(i, "its answer is " + ("missing" if not found else "written more than once"))
        a, b = found[0]
        others = [p for key, ps in where.items() if key[1] != i for p in ps if start <= p[0] < a]
        if a < start or others:
            raise self._rewritten(i, "its answer is not where the model would write it")
        end = self._special_end(full, b)
        if end < 0:  # a template that closes turns with plain text
            end = max(b, self._trim_end(full, start, self._diverge(self.render(messages[: i + 1]), full)))
        has_reasoning = bool(rz.parts(m).reasoning)
        shown = where.get(("r", i), [])
        if len(shown) > 1 or any(not start <= r0 < a for r0, _ in shown):
            raise self._rewritten(i, "its reasoning is not where the model would write it")
        dropped = 0
        if has_reasoning and not shown:
            if i == len(messages) - 1:
                raise DataError(
                    f"the chat template does not render the reasoning of assistant turn #{i + 1}, the last "
                    "message, so it would never be seen in training (templates that do not read `thinking` / "
                    "`reasoning_content`, and DeepSeek-R1-Distill's, which strips everything up to `</think>`). "
                    "Set model.chat_template to a template that renders it (gpt-oss's, Qwen3's), or remove the "
                    "reasoning from the data"
                )
            dropped = 1
            start = a  # the template text before the answer stands where the reasoning was
        elif has_reasoning and self.reasoning == "mask":
            start = a
        return start, end, dropped

    def _prefix_spans(self, messages: Sequence[Message], full: str) -> list[tuple[int, int]]:
        """Spans from prefix renders alone (a template that changes the texts, so markers cannot be mapped)."""
        spans: list[tuple[int, int]] = []
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = self._diverge(self.render(messages[:i], generation_prompt=True), full)
            end = self._trim_end(full, start, self._diverge(self.render(messages[: i + 1]), full))
            content = m["content"].strip()
            closed = self._content_end(full, start, content)
            if content not in full[start:end]:
                end = closed
            elif closed >= 0:
                end = min(end, closed)  # Phi-3 writes EOS after its last turn's <|end|>: not part of the turn
            if start < (spans[-1][1] if spans else 0) or end < 0:
                raise self._rewritten(i, "it drops or changes text")
            spans.append((start, end))
        return spans

    def _closing(self, text: str, end: int) -> str | None:
        """The special token `text[:end]` ends with, or None."""
        return next((t for t in self.specials if len(t) <= end and text.startswith(t, end - len(t))), None)

    def endings(self, messages: Sequence[Message], full: str, spans: Sequence[tuple[int, int]]) -> dict[int, str]:
        """Check that every trained assistant turn ends in a stop token (EOS or the template's end of turn: what
        sampling and the export stop on). Returns {character position: stop token to train there} for turns the
        template ends otherwise in the whole conversation but with a stop token when they are the last message
        (gpt-oss: `<|end|>` for the `<|return|>` the model wrote); DataError for any other ending."""
        relabel: dict[int, str] = {}
        turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        stops = ", ".join(self.stops) or "none: the tokenizer has no EOS"
        for i, (start, end) in zip(turns, spans, strict=True):
            token = self._closing(full, end)
            if token in self.stops:
                continue
            if token is None:
                raise DataError(
                    f"the chat template closes assistant turn #{i + 1} with plain text ({full[max(start, end - 30):end]!r}), "
                    f"not with a token generation stops on ({stops}): a model trained on it would not stop after its "
                    "answers, and the export's stopping check would fail. Set model.chat_template to a template that "
                    f"ends each assistant turn with EOS ({self.tok.eos_token}) or an end-of-turn special token"
                )
            closing = self._closing_when_last(messages[: i + 1], full[start:end - len(token)].strip())
            if closing is None or closing not in self.stops:
                raise DataError(
                    f"the chat template ends assistant turn #{i + 1} with {token}, a token generation does not stop on "
                    f"(sampling and the export stop on {stops}), and the turn does not end in one of those when it is "
                    "the conversation's last message either: training it would teach the model to go on after its "
                    "answer. Set model.chat_template to a template that ends every assistant turn with EOS or its "
                    "end-of-turn token"
                )
            relabel[end - len(token)] = closing
        return relabel

    def _closing_when_last(self, messages: Sequence[Message], answer: str) -> str | None:
        """The first special token after `answer` when the conversation ends with it (only special tokens and
        whitespace after it), or None."""
        rest = self.render(messages).rstrip()
        trailing: list[str] = []
        while (token := self._closing(rest, len(rest))) is not None:
            trailing.insert(0, token)
            rest = rest[: -len(token)].rstrip()
        return trailing[0] if trailing and rest.endswith(answer) else None
