"""A generated reply split into its reasoning and its answer: what samples show and metrics score.

Reasoning models write their thoughts before the answer, in one of two ways that chat templates
train them on (trainer/data/reasoning.py):
- Harmony (gpt-oss): messages on channels, `<|channel|>analysis<|message|>thoughts<|end|>`, then
  `<|start|>assistant<|channel|>final<|message|>answer<|return|>`. The markers are special tokens,
  so a reply decoded without them runs the channel names into the text (`analysisthoughts...
  assistantfinalanswer`) and no answer could be found in it. Replies are decoded with them.
- `<think>thoughts</think>answer` (DeepSeek-R1, Qwen3), where the generation prompt may already
  have opened the `<think>`.

`split_reply` takes the reply decoded with its special tokens and returns the answer (the `final`
channel, or the text after the last `</think>`) with the special tokens removed. A reply that
reasoned but never reached its answer (out of `eval.max_new_tokens`) has the answer "" and
`finished` False: it scores as no answer, never as its thoughts.

`generate_tokens` is llama.cpp's side: the reply as token ids (llama.cpp's text leaves out the tokens it types as
control, and the parts of a reasoning reply are found by such tokens).

Standard library only: a registered GGUF's `python_function` model carries this file beside its own code
(trainer/export/logged_model.py) and splits the replies it serves the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"  # trainer/data/reasoning.py's (tests/unit/test_reply.py)
CHANNEL = "<|channel|>"
# One Harmony message: its channel (then optional words such as `to=functions.x`), its body up to the next marker.
HARMONY_MESSAGE = re.compile(r"<\|channel\|>(\w+)[^<]*<\|message\|>(.*?)(?=<\|(?:end|return|call|start)\|>|$)", re.S)


@dataclass(frozen=True)
class Reply:
    answer: str
    reasoning: str = ""
    finished: bool = True  # False: the reply reasoned and stopped before its answer


def opens_thought(prompt: str) -> bool:
    """Whether the generation prompt ends inside an open `<think>` (the reply then starts with thoughts)."""
    return prompt.rfind(THINK_OPEN) > prompt.rfind(THINK_CLOSE)


def _clean(text: str, specials: Iterable[str]) -> str:
    for token in sorted(set(specials), key=len, reverse=True):
        if token:
            text = text.replace(token, "")
    return text.strip()


def split_reply(text: str, specials: Iterable[str] = (), *, thinking: bool = False) -> Reply:
    """`text`: the generated tokens decoded with their special tokens; `specials`: those tokens' texts (removed from
    the answer and the reasoning); `thinking`: the prompt left a `<think>` open (`opens_thought`)."""
    specials = tuple(specials)
    if CHANNEL in text:
        messages = HARMONY_MESSAGE.findall(text)
        reasoning = "\n".join(_clean(body, specials) for channel, body in messages if channel != "final")
        final = [body for channel, body in messages if channel == "final"]
        if final:
            return Reply(_clean(final[-1], specials), reasoning.strip())
        return Reply("", reasoning.strip(), finished=False)
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        before = text[:close]
        opened = before.find(THINK_OPEN)
        thoughts = before[opened + len(THINK_OPEN):] if opened >= 0 else before
        return Reply(_clean(text[close + len(THINK_CLOSE):], specials), _clean(thoughts, specials))
    opened = text.find(THINK_OPEN)
    if thinking or opened >= 0:  # thoughts that never closed
        return Reply("", _clean(text[opened + len(THINK_OPEN):] if opened >= 0 else text, specials), finished=False)
    return Reply(_clean(text, specials))


def special_texts(tokenizer: object) -> list[str]:
    """The texts of a transformers tokenizer's special tokens: its named ones and every added token marked special
    (Harmony's `<|channel|>` ... are the latter)."""
    named = list(getattr(tokenizer, "all_special_tokens", []) or [])
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return named + [t.content for t in added.values() if getattr(t, "special", False)]


def reply_of(tokenizer: object, ids: list[int], prompt: str) -> Reply:
    """The reply in the generated token `ids` (transformers or llama.cpp: a GGUF keeps the tokenizer's ids) that
    followed the rendered `prompt`, split into its answer and reasoning."""
    text = tokenizer.decode(ids, skip_special_tokens=False)  # type: ignore[attr-defined]
    return split_reply(text, special_texts(tokenizer), thinking=opens_thought(prompt))


def cut_short(replies: list[Reply], max_new_tokens: int) -> str | None:
    """A warning when replies ran out of `eval.max_new_tokens` while still reasoning (they score as no answer), or
    None."""
    n = sum(not r.finished for r in replies)
    if not n:
        return None
    return (f"{n} of {len(replies)} replies ran out of eval.max_new_tokens ({max_new_tokens}) while still reasoning "
            "and count as no answer: raise eval.max_new_tokens to score their answers")


def generate_tokens(llm: Any, prompt: list[int], max_tokens: int, *, top_k: int = 1, top_p: float = 1.0,
                    temperature: float = 0.0, seed: int = 0) -> list[int]:
    """A `llama_cpp.Llama`'s reply to the token ids `prompt`, sampled as its `create_completion` samples (its defaults
    for the rest; greedy by default), as token ids up to its first end-of-generation token (not included), at most
    `max_tokens` and what the context leaves. The prompt is evaluated afresh: no reply depends on the one before."""
    import llama_cpp

    room = llm.n_ctx() - len(prompt)
    if room < 1:
        raise ValueError(f"the prompt is {len(prompt)} tokens and fills the context of {llm.n_ctx()} tokens: load the "
                         "model with a larger context, or send a shorter prompt")
    limit = min(max_tokens, room) if max_tokens > 0 else room
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    llm.reset()
    llm.set_seed(seed)
    out: list[int] = []
    for token in llm.generate(prompt, top_k=top_k, top_p=top_p, temp=temperature):
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        out.append(token)
        if len(out) >= limit:
            break
    return out
