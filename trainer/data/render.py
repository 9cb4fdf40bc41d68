"""Conversation -> token ids + labels, through the tokenizer's own chat template.

The text is the model's chat template applied to the whole conversation, exactly as at
inference. Labels (`train_on: completions`) keep the assistant turns and mask everything else
with -100. An assistant span is the text the model itself must produce: its content plus the
end-of-turn token the template closes the turn with (`<|eot_id|>`, `<|im_end|>`, `<|end|>`,
`<turn|>` ...), without the newline some templates put after that token.

Turns are found by rendering the conversation and parts of it (trainer/data/turns.py says how).

Reasoning (`data.reasoning`). What the model generates after the generation prompt is the turn:
  gpt-oss (Harmony), last turn: `<|channel|>analysis<|message|>{thinking}<|end|><|start|>assistant
          <|channel|>final<|message|>{content}<|return|>`;
  `<think>` templates (Qwen3): `<think>\n{reasoning}\n</think>\n\n{answer}<|im_end|>`.
`train` trains all of it, reasoning and `<|return|>` included. `mask` trains the answer's tokens
and the end-of-turn token only: the reasoning, and the template text between the generation
prompt and the answer (`<|channel|>analysis<|message|>`, `<|end|><|start|>assistant<|channel|>
final<|message|>`, `<think>`, `</think>`), stay context. Those closing tokens are where the model
decides its reasoning is over: their place is set by the reasoning, which `mask` leaves to the
base model, and their text is the same in every row, so they carry no signal from the data. A
token that straddles the answer's first character (`" Yes"` after `</think>`) is trained.

Templates that drop reasoning: gpt-oss's drops the analysis of every assistant turn but the last
(and ends those turns with `<|end|>`, not `<|return|>`); Qwen3's and DeepSeek-R1's drop `<think>`
blocks of turns before the last user message (DeepSeek-R1-Distill's from every turn, the last
included). Such a turn is trained as the full conversation renders it: its answer and
end-of-turn token; the template text before its answer (`<|channel|>final<|message|>`) is not
trained either way, since the model would have written its reasoning there. The turn is counted
in `Sample.reasoning_dropped` (`reasoning_dropped_turns` in the data stats). When the template
drops the reasoning of the conversation's final message, where every template that renders
reasoning shows it, the reasoning would never be seen: the job stops with a DataError naming
the fix. So does a template that changes earlier turns in another way (the answer missing,
moved or repeated).

Turn endings. Every trained assistant turn ends in a token generation stops on (`stop_tokens`: EOS and
the template's end-of-turn token; sample answers stop on them, and the export writes them into the
generation config and the Modelfile and checks llama.cpp stops on them), so that the model learns to
stop after each answer. A turn that the full render ends with another special token, but that ends
in a stop token when it is the conversation's last message, is one the template rewrites once later
turns follow: gpt-oss's writes `<|end|>` where the model wrote `<|return|>` (Harmony clients store a
finished answer that way). Its input stays `<|end|>`, as the model sees that history at inference,
and its label is the `<|return|>` the model wrote: training `<|end|>` there would teach the model to
go on after a final answer, and no runtime stops on `<|end|>`. Any other ending (plain text, or a
special token that ends the turn in no position) stops the job with a DataError.

Templates that write today's date (gpt-oss, Llama 3.2) render with the date the tokenizer is pinned
to (`data.template_date`, trainer/data/template_date.py), or template_date.DEFAULT: never the calendar.

Tokens are mapped to spans by character offsets (fast tokenizers): a token is trained when it
starts inside a span. BOS: when the template writes it, the tokenizer must not add another; when
the template does not and the tokenizer would (Phi-3's `<s>`), it is added once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from trainer.data import template_date
from trainer.data.errors import BadRow, DataError
from trainer.data.formats import Message
from trainer.data.turns import TemplateTurns

IGNORE = -100


@dataclass
class Sample:
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False  # cut to data.max_seq_len (`too_long: truncate`); counted in DataStats
    reasoning_dropped: int = 0  # assistant turns whose reasoning the chat template does not render

    @property
    def trained(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


class ChatRenderer(TemplateTurns):
    def __init__(self, tokenizer: Any, *, max_seq_len: int, train_on: str = "completions", too_long: str = "bad_row",
                 reasoning: str = "train"):
        if not getattr(tokenizer, "chat_template", None):
            raise DataError(
                "the tokenizer has no chat template: use an instruct/chat base model, or give the tokenizer "
                "a `chat_template` (tokenizer_config.json / chat_template.jinja next to the model)"
            )
        if not getattr(tokenizer, "is_fast", False):
            raise DataError("a fast (Rust) tokenizer is needed for character offsets; the base model has a slow one")
        self.tok = tokenizer
        self.max_seq_len = max_seq_len
        self.train_on = train_on
        self.too_long = too_long
        self.reasoning = reasoning
        self.bos = tokenizer.bos_token
        self.bos_prefix = self._added_prefix()
        specials = set(tokenizer.all_special_tokens)
        specials.update(t.content for t in tokenizer.added_tokens_decoder.values())
        self.specials = tuple(sorted((s for s in specials if s), key=len, reverse=True))
        self.special_re = re.compile("|".join(map(re.escape, self.specials))) if self.specials else None
        self.longest_special = len(self.specials[0]) if self.specials else 0
        self.day = template_date.pinned(tokenizer) or template_date.DEFAULT  # never the calendar
        self.stops = stop_tokens(tokenizer)

    def _added_prefix(self) -> list[int]:
        """Ids the tokenizer itself puts before a text (usually [bos] or [])."""
        with_special = self.tok("x").input_ids
        without = self.tok("x", add_special_tokens=False).input_ids
        for k in range(len(with_special) - len(without) + 1):
            if with_special[k : k + len(without)] == without:
                return list(with_special[:k])
        return []

    # -- tokens -------------------------------------------------------------------------------
    def encode(self, messages: Sequence[Message]) -> Sample:
        """One conversation; raises BadRow when it cannot be used."""
        result = self.encode_many([messages])[0]
        if isinstance(result, BadRow):
            raise result
        return result

    def encode_many(self, conversations: Sequence[Sequence[Message]]) -> list[Sample | BadRow]:
        """Encode a batch (one Rust call for the tokenization); a BadRow per unusable conversation."""
        out: list[Sample | BadRow | None] = []
        texts: list[str] = []
        spans: list[tuple[list[tuple[int, int]], int, dict[int, str]]] = []
        for j, messages in enumerate(conversations):
            try:
                text, sp, dropped = self.spans(messages)
                relabel = self.endings(messages, text, sp)
            except BadRow as bad:
                out.append(bad)
                continue
            except DataError as e:
                e.index = j  # type: ignore[attr-defined]  # which conversation: the caller knows its file / line
                raise
            out.append(None)
            texts.append(text)
            spans.append((sp, dropped, relabel))
        enc = self.tok(texts, add_special_tokens=False, return_offsets_mapping=True) if texts else None
        k = 0
        for j, slot in enumerate(out):
            if slot is not None:
                continue
            assert enc is not None
            out[j] = self._sample(texts[k], enc["input_ids"][k], enc["offset_mapping"][k], *spans[k])
            k += 1
        return out  # type: ignore[return-value]

    def _sample(
        self, text: str, ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]], dropped: int,
        relabel: dict[int, str],
    ) -> Sample | BadRow:
        prefix = [] if (self.bos and text.startswith(self.bos)) else self.bos_prefix
        if self.train_on == "all":
            labels = list(ids)
        else:
            labels = [IGNORE] * len(ids)
            s = 0
            for t, (a, b) in enumerate(offsets):
                while s < len(spans) and a >= spans[s][1]:
                    s += 1
                if s == len(spans):
                    break
                if spans[s][0] < max(b, a + 1):  # starts inside the span, or straddles its first character
                    labels[t] = ids[t]
        if relabel:  # turn endings the template rewrote for history: trained as the stop token the model wrote
            starts = {a: t for t, (a, b) in enumerate(offsets) if b > a}
            for pos, token in relabel.items():
                if pos not in starts:
                    raise DataError(f"the special token at character {pos} of a rendered conversation is not a "
                                    "token of its own: the tokenizer does not know it as an added token")
                labels[starts[pos]] = self.tok.convert_tokens_to_ids(token)
        # The first token of a sample is never a target: in a packed row its label would make the
        # previous sample's last token predict it.
        sample = Sample([*prefix, *ids], [IGNORE] * len(prefix) + labels, reasoning_dropped=dropped)
        if sample.labels:
            sample.labels[0] = IGNORE
        n = len(sample.input_ids)
        if n > self.max_seq_len:
            if self.too_long == "bad_row":
                return BadRow(
                    "too_long",
                    f"{n} tokens, more than data.max_seq_len = {self.max_seq_len}; raise data.max_seq_len "
                    "or set data.too_long: truncate",
                )
            sample = Sample(sample.input_ids[: self.max_seq_len], sample.labels[: self.max_seq_len], truncated=True,
                            reasoning_dropped=dropped)
        if sample.trained == 0 and n > self.max_seq_len:
            return BadRow("too_long", f"no assistant token within the first {self.max_seq_len} of its {n} tokens")
        if sample.trained == 0:
            return BadRow("empty_content", "the rendered conversation has no assistant token to train on")
        return sample


def stop_tokens(tokenizer: Any) -> list[str]:
    """The tokens generation stops on: EOS and the chat template's end-of-turn token (`end_of_turn`). Sample
    generation stops on them, and the export writes them into generation_config.json, the Modelfile's `stop`s and
    checks each ends generation in llama.cpp; so every trained assistant turn must end in one (`ChatRenderer`)."""
    try:
        eot = end_of_turn(tokenizer)
    except Exception:  # noqa: BLE001 - a template that refuses the probe's shape: EOS alone
        eot = None
    return list(dict.fromkeys(t for t in (tokenizer.eos_token, eot) if t))


def end_of_turn(tokenizer: Any) -> str | None:
    """The special token the chat template writes right after an assistant message."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    marker = "kubetune-end-of-turn-probe"
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": marker}], tokenize=False)
    after = text[text.rfind(marker) + len(marker):]
    special = set(tokenizer.all_special_tokens) | {t.content for t in tokenizer.added_tokens_decoder.values()
                                                   if t.special}
    for tok in tokenizer.convert_ids_to_tokens(tokenizer(after, add_special_tokens=False)["input_ids"]):
        if tok in special:
            return tok
    return None
