"""Whether `eval.max_new_tokens` leaves room for the replies the held-out references show.

Sample answers and `eval.metrics` both answer the first `eval.num_samples` conversations of `data.eval` (else
`data.train`), greedily and at most `eval.max_new_tokens` long. A reference reply longer than that cannot be
matched: the model's answer is cut where the budget ends, `exact_match` scores it 0 and `rouge_l` low, and a
reasoning model runs out while still thinking and has no answer at all. Nothing fails; the numbers are just
worse than the model. This says so before any time is spent: `launch data validate` prints it, the trainer
says it when it starts, the export job when it evaluates.

A reference's length is its reasoning and its answer tokenized apart, without the template's markers around them:
a lower bound on the tokens a model needs to write the same reply.

    convs = held_out_conversations(spec, base_dir)
    if warning := too_short(reply_lengths(convs, tokenizer), spec.eval.max_new_tokens, where):
        say(warning)

Light (no torch): the launcher imports it.
"""

from __future__ import annotations

import math
import os
from typing import Any

from trainer.data.reasoning import parts
from trainer.spec.job import JobSpec

Message = dict[str, str]
STEP = 64  # a suggested budget is rounded up to a multiple of this


def reference_of(conv: list[Message]) -> Message | None:
    """The assistant turn that answered the conversation's last user turn (the reference), or None."""
    last = max((i for i, m in enumerate(conv) if m["role"] == "user"), default=None)
    if last is None or last + 1 >= len(conv) or conv[last + 1]["role"] != "assistant":
        return None
    return conv[last + 1]


def reply_tokens(tokenizer: Any, reply: Message) -> int:
    """Tokens of a reference reply: its reasoning (a `thinking` / `reasoning_content` field or `<think>...</think>`)
    and its answer, each tokenized without special tokens."""
    p = parts(reply)
    return sum(len(tokenizer(text, add_special_tokens=False).input_ids) for text in (p.reasoning, p.answer) if text)


def reply_lengths(convs: list[list[Message]], tokenizer: Any) -> list[int]:
    """The token length of each conversation's reference reply (conversations without one are left out)."""
    return [reply_tokens(tokenizer, r) for r in map(reference_of, convs) if r is not None]


def held_out_conversations(spec: JobSpec, base_dir: str | os.PathLike[str] | None = None) -> tuple[list[list[Message]], str]:
    """The conversations whose replies sample answers and `eval.metrics` are compared to, and where they come from
    (`data.eval`, else `data.train`); none when neither uses references (`eval.prompts` set and no `eval.metrics`)."""
    from trainer.data.builder import conversations

    split = "eval" if spec.data.eval else "train"
    if spec.eval.prompts and not spec.eval.metrics:
        return [], f"data.{split}"
    convs = conversations(spec, split, spec.eval.num_samples, base_dir=base_dir)
    return convs, f"the first {len(convs)} conversations of data.{split}"


def too_short(lengths: list[int], max_new_tokens: int, where: str) -> str | None:
    """A warning when some reference replies are longer than `eval.max_new_tokens`, or None."""
    longer = sorted(n for n in lengths if n > max_new_tokens)
    if not longer:
        return None
    suggested = min(4096, math.ceil(longer[-1] / STEP) * STEP)
    fix = (f"raise eval.max_new_tokens to at least {suggested}" if longer[-1] <= 4096 else
           "eval.max_new_tokens is at most 4096: keep references shorter than that, or leave those prompts to "
           "eval.prompts")
    return (f"eval.max_new_tokens ({max_new_tokens}) is shorter than {len(longer)} of the {len(lengths)} reference "
            f"replies of {where} (the longest has {longer[-1]} tokens, reasoning included): answers that long are cut "
            f"off, so exact_match cannot match them, rouge_l scores them low and a reasoning model may run out before "
            f"its answer; {fix}")
