"""Answers to a few prompts before and after training: the quickest check that training did something.

Prompts are `eval.prompts`, or else the first `eval.num_samples` held-out conversations cut at
their last user turn (train data only when there is no eval data, and the output says so).
Generation is greedy, `eval.max_new_tokens` long, with the same chat template as training. A reasoning
model's answer is its reply without the reasoning (trainer/eval/reply.py), and so is the reference; the
reasoning is shown beside the answer, and a reply that ran out of tokens while reasoning says so.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from trainer.data import conversations
from trainer.data.reasoning import parts
from trainer.data.render import ChatRenderer, stop_tokens
from trainer.eval.reply import Reply, reply_of
from trainer.eval.room import reference_of
from trainer.spec.job import JobSpec

Message = dict[str, str]


@dataclass
class Sample:
    prompt: list[Message]
    reference: str | None = None  # the held-out answer, when the prompt came from data
    replies: dict[str, Reply] = field(default_factory=dict)  # "before" / "after" -> the reply, split

    @property
    def question(self) -> str:
        return self.prompt[-1]["content"]

    @property
    def answers(self) -> dict[str, str]:
        """"before" / "after" -> the answer (without its reasoning): what is compared and scored."""
        return {key: reply.answer for key, reply in self.replies.items()}

    def saved(self, key: str) -> dict | None:
        """The reply under `key` as checkpoints keep it (`restore` reads it back)."""
        return asdict(self.replies[key]) if key in self.replies else None

    def restore(self, key: str, saved: dict | str) -> None:
        """A reply `saved` before (checkpoints from before reasoning was kept hold the answer only)."""
        self.replies[key] = Reply(**saved) if isinstance(saved, dict) else Reply(saved)


def up_to_last_user(conv: list[Message]) -> tuple[list[Message], str | None]:
    """The conversation up to and including its last user turn, and the answer that followed (without its
    reasoning: `<think>...</think>` or a `thinking` field)."""
    last = max((i for i, m in enumerate(conv) if m["role"] == "user"), default=None)
    if last is None:
        return [], None
    reference = reference_of(conv)
    return conv[: last + 1], parts(reference).answer if reference is not None else None


def choose(spec: JobSpec, base_dir: str | os.PathLike[str] | None = None) -> tuple[list[Sample], str]:
    """The prompts to sample, and a line saying where they came from."""
    if spec.eval.prompts:
        system = [{"role": "system", "content": spec.data.system_prompt}] if spec.data.system_prompt else []
        return [Sample(system + [{"role": "user", "content": p}]) for p in spec.eval.prompts], "eval.prompts"
    n = spec.eval.num_samples
    if n == 0:
        return [], "none (eval.num_samples is 0)"
    split = "eval" if spec.data.eval else "train"
    convs = conversations(spec, split, n, base_dir=base_dir)
    samples = []
    for conv in convs:
        prompt, reference = up_to_last_user(conv)
        if prompt:
            samples.append(Sample(prompt, reference))
    where = f"the first {len(samples)} conversations of data.{split}"
    if split == "train":
        where += " (no data.eval is set, so these are training prompts, not held out)"
    return samples, where


def stop_ids(tokenizer: Any) -> list[int]:
    """The ids of `render.stop_tokens`: EOS plus the special token the chat template closes an assistant turn
    with (`<|eot_id|>`, `<|im_end|>`, `<end_of_turn>`, ...). The export stops on the same tokens."""
    return sorted(set(tokenizer.convert_tokens_to_ids(stop_tokens(tokenizer))))


def prompt_prefix(tokenizer: Any) -> tuple[str | None, list[int]]:
    """What training puts before a rendered conversation: the tokenizer's added prefix (Phi-3's `<s>`) unless
    the template writes BOS itself (trainer/data/render.py)."""
    renderer = ChatRenderer(tokenizer, max_seq_len=1)
    return renderer.bos, renderer.bos_prefix


def prompt_text(tokenizer: Any, messages: list[Message]) -> str:
    return str(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def prompt_ids(tokenizer: Any, messages: list[Message], prefix: tuple[str | None, list[int]] | None = None) -> list[int]:
    """A generation prompt's ids exactly as training tokenizes the same turns: the rendered text with the
    same BOS rule, so the model answers from the context it was trained on."""
    bos, added = prefix or prompt_prefix(tokenizer)
    text = prompt_text(tokenizer, messages)
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return ids if (bos and text.startswith(bos)) else [*added, *ids]


@torch.no_grad()
def generate(model: Any, tokenizer: Any, samples: list[Sample], key: str, max_new_tokens: int,
             synced_gpus: bool = False) -> None:
    """Greedy replies for every sample, stored under `sample.replies[key]`."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    eos = stop_ids(tokenizer)
    prefix = prompt_prefix(tokenizer)
    try:
        for s in samples:
            ids = torch.tensor([prompt_ids(tokenizer, s.prompt, prefix)], device=device)
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
                use_cache=True, pad_token_id=tokenizer.pad_token_id, eos_token_id=eos, synced_gpus=synced_gpus,
                temperature=None, top_p=None, top_k=None,
            )
            s.replies[key] = reply_of(tokenizer, out[0, ids.shape[1]:].tolist(), prompt_text(tokenizer, s.prompt))
    finally:
        model.train(was_training)


def _short(text: str | None, width: int = 200) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


NO_ANSWER = "(no answer: still reasoning when eval.max_new_tokens ran out)"


def _shown(reply: Reply, indent: str) -> str:
    """A reply's answer, and its reasoning on the next line when it has any."""
    text = _short(reply.answer) if reply.finished else NO_ANSWER
    if reply.reasoning:
        text += f"\n{indent}  reasoning: {_short(reply.reasoning, 160)}"
    return text


def render(samples: list[Sample]) -> str:
    lines = []
    for i, s in enumerate(samples, 1):
        lines.append(f"[{i}] {_short(s.question)}")
        if s.reference is not None:
            lines.append(f"    reference: {_short(s.reference)}")
        before, after = s.replies.get("before"), s.replies.get("after")
        if before is not None and after is not None:
            lines.append(f"    before → after:\n      {_shown(before, '      ')}\n    → {_shown(after, '      ')}")
        else:
            for key, reply in s.replies.items():
                lines.append(f"    {key}: {_shown(reply, '    ')}")
    return "\n".join(lines)


def table(samples: list[Sample]) -> dict[str, list[str]]:
    """Columns for `mlflow.log_table`: prompt, reference, before, after; with a reasoning model also each reply's
    reasoning (`before_reasoning`, `after_reasoning`), and "" for an answer its reply never reached."""
    cols = {
        "prompt": [s.question for s in samples],
        "reference": [s.reference or "" for s in samples],
    }
    for key in ("before", "after"):
        cols[key] = [s.answers.get(key, "") for s in samples]
    for key in ("before", "after"):
        if any(key in s.replies and s.replies[key].reasoning for s in samples):
            cols[f"{key}_reasoning"] = [s.replies[key].reasoning if key in s.replies else "" for s in samples]
    return cols
