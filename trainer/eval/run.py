"""Evaluate a model on held-out conversations: greedy answers, task metrics, loss and perplexity.

    result = evaluate_hf(model, tokenizer, spec, base_dir=here)           # merged / adapted HF model
    result = evaluate_gguf(path, tokenizer, spec, base_dir=here)          # a GGUF, through llama.cpp
    mlflow.log_metrics(result.metrics())                                  # eval.<metric>, eval.loss ...
    client.set_model_version_tag(name, version, k, v) for k, v in result.tags().items()

Prompts are the first `eval.num_samples` conversations of `data.eval` (else `data.train`, said in
`result.source`) cut at their last user turn; the answer that followed is the reference.
Generation is greedy and `eval.max_new_tokens` long, through the training chat template. Every
metric of `eval.metrics` scores every answer (`exact_match` / `rouge_l` only those with a
reference); a metric's value is its mean. Held-out loss is the mean over the trained tokens of
`data.eval` (as `build_dataset` prepares them), perplexity its exponential (HF models only).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.eval import room
from trainer.eval.metrics import NEEDS_REFERENCE, Context, Score, score
from trainer.eval.reply import Reply, cut_short, generate_tokens, reply_of
from trainer.spec.job import JobSpec

Message = dict[str, str]
TAG_PREFIX = "kubetune.eval."


@dataclass
class Item:
    prompt: list[Message]
    reference: str | None
    answer: str = ""
    scores: dict[str, Score] = field(default_factory=dict)
    reasoning: str = ""  # a reasoning model's thoughts before its answer (trainer/eval/reply.py)
    finished: bool = True  # False: the reply ran out of eval.max_new_tokens while reasoning; its answer is ""
    expected: Message | None = None  # the reference reply as the data has it, reasoning included

    def take(self, reply: Reply) -> None:
        self.answer, self.reasoning, self.finished = reply.answer, reply.reasoning, reply.finished


@dataclass
class EvalResult:
    model: str  # what was evaluated: "merged", "q8_0" ...
    source: str  # where the prompts came from
    items: list[Item]
    means: dict[str, float]  # metric -> mean score over the items it applied to
    counts: dict[str, int]  # metric -> how many items it scored
    loss: float | None = None
    perplexity: float | None = None
    too_short: str | None = None  # eval.max_new_tokens is shorter than some references (trainer/eval/room.py)

    def metrics(self, prefix: str = "eval.") -> dict[str, float]:
        """MLflow metrics: `eval.<metric>` (mean score), `eval.loss`, `eval.perplexity`."""
        out = {f"{prefix}{name}": value for name, value in self.means.items()}
        if self.loss is not None:
            out[f"{prefix}loss"] = self.loss
        if self.perplexity is not None:
            out[f"{prefix}perplexity"] = self.perplexity
        return out

    def tags(self) -> dict[str, str]:
        """Registry version tags, `kubetune.eval.<metric>`: values with 4 decimals, how many answers, and
        `kubetune.eval.too_short` when `eval.max_new_tokens` is shorter than some references."""
        out = {f"{TAG_PREFIX}{k.removeprefix('eval.')}": f"{v:.4f}" for k, v in self.metrics().items()}
        out[f"{TAG_PREFIX}answers"] = str(len(self.items))
        if self.too_short:  # the scores are of answers cut short: whoever reads them from the registry is told
            out[f"{TAG_PREFIX}too_short"] = self.too_short
        return out

    def cut_short(self, max_new_tokens: int) -> str | None:
        """A warning when replies ran out of tokens while reasoning (they score as no answer), or None."""
        return cut_short([Reply(it.answer, it.reasoning, it.finished) for it in self.items], max_new_tokens)

    def table(self) -> dict[str, list[Any]]:
        """Columns for `mlflow.log_table`: prompt, reference, answer, with a reasoning model its `reasoning` and
        whether the reply reached its answer (`finished`), then each metric's score and why."""
        cols: dict[str, list[Any]] = {
            "prompt": [it.prompt[-1]["content"] for it in self.items],
            "reference": [it.reference or "" for it in self.items],
            "answer": [it.answer for it in self.items],
        }
        if any(it.reasoning or not it.finished for it in self.items):
            cols["reasoning"] = [it.reasoning for it in self.items]
            cols["finished"] = [it.finished for it in self.items]
        for name in self.means:
            cols[name] = [it.scores[name].value if name in it.scores else None for it in self.items]
            cols[f"{name}_why"] = [it.scores[name].why if name in it.scores else "" for it in self.items]
        return cols


def context(spec: JobSpec, base_dir: str | os.PathLike[str] | None = None) -> Context:
    """What the metrics need from the spec; an `s3://` `eval.sources_root` is copied to the local cache once."""
    from trainer import storage

    root = spec.eval.sources_root
    if root is not None and storage.is_remote(root):
        from trainer.model.load import cache_root

        root = str(storage.fetch(root, cache_root().parent / "sources"))
    elif root is not None and base_dir is not None and not Path(root).expanduser().is_absolute():
        root = str(Path(base_dir) / root)
    return Context(sources_root=Path(root).expanduser() if root else None, normalize=spec.eval.exact_match == "normalized")


def held_out(spec: JobSpec, base_dir: str | os.PathLike[str] | None = None) -> tuple[list[Item], str]:
    """The prompts to answer (up to the last user turn) with their references."""
    from trainer.data import conversations
    from trainer.tracking.samples import up_to_last_user

    split = "eval" if spec.data.eval else "train"
    items = []
    for conv in conversations(spec, split, spec.eval.num_samples, base_dir=base_dir):
        prompt, reference = up_to_last_user(conv)
        if prompt:
            items.append(Item(prompt, reference, expected=room.reference_of(conv)))
    where = f"the first {len(items)} conversations of data.{split}"
    return items, where + (" (no data.eval is set: training prompts, not held out)" if split == "train" else "")


def budget(items: list[Item], tokenizer: Any, spec: JobSpec, source: str) -> str | None:
    """A warning when `eval.max_new_tokens` is shorter than some of the items' reference replies, or None."""
    lengths = [room.reply_tokens(tokenizer, it.expected) for it in items if it.expected is not None]
    return room.too_short(lengths, spec.eval.max_new_tokens, source)


def score_items(items: list[Item], names: list[str], ctx: Context) -> tuple[dict[str, float], dict[str, int]]:
    """Score every answer with every metric; the mean and the count per metric."""
    means: dict[str, float] = {}
    counts: dict[str, int] = {}
    for name in names:
        scored = [it for it in items if it.reference is not None or name not in NEEDS_REFERENCE]
        for it in scored:
            it.scores[name] = score(name, it.answer, it.reference, ctx)
        counts[name] = len(scored)
        if scored:
            means[name] = sum(it.scores[name].value for it in scored) / len(scored)
    return means, counts


def held_out_loss(model: Any, tokenizer: Any, spec: JobSpec, base_dir: str | os.PathLike[str] | None = None,
                  batch_size: int = 4) -> float:
    """Mean cross-entropy per trained token of data.eval (nats per token; trainer/train/loss.py), laid out as training
    lays it out: packed rows are first checked to keep their samples apart (trainer/model/isolation.py). Preference
    data: of the preferred answers (chosen, or desirable), given their prompts."""
    import torch

    from trainer.data import Collator, build_dataset
    from trainer.model.isolation import ensure_isolated
    from trainer.train.loss import token_loss_sum

    if spec.training.objective == "sft":
        rows, _ = build_dataset(spec, tokenizer, "eval", base_dir=base_dir)
    else:  # a preference job: the preferred answers, one per row (trainer/data/preference.py `preferred_rows`)
        from trainer.data.preference import preferred_rows

        rows = preferred_rows(spec, tokenizer, "eval", base_dir=base_dir)
    packed = spec.data.packing and spec.training.objective == "sft"
    collate = Collator(tokenizer, packed)
    if packed:
        ensure_isolated(model, collate, vocab=len(tokenizer), say=lambda line: None)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(rows), batch_size):
                batch = collate(rows[i : i + batch_size])
                labels = batch.pop("labels").to(device)
                inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}
                s, n = token_loss_sum(model(**inputs).logits, labels)
                total, count = total + float(s), count + int(n)
    finally:
        model.train(was_training)
    return total / count


def evaluate_hf(model: Any, tokenizer: Any, spec: JobSpec, *, base_dir: str | os.PathLike[str] | None = None,
                label: str = "merged") -> EvalResult:
    """Greedy answers, task metrics and (with data.eval) held-out loss and perplexity of an HF model."""
    from trainer.tracking.samples import Sample, generate

    items, source = held_out(spec, base_dir)
    samples = [Sample(it.prompt, it.reference) for it in items]
    generate(model, tokenizer, samples, "answer", spec.eval.max_new_tokens)
    for it, s in zip(items, samples, strict=True):
        it.take(s.replies["answer"])
    means, counts = score_items(items, list(spec.eval.metrics), context(spec, base_dir))
    result = EvalResult(label, source, items, means, counts, too_short=budget(items, tokenizer, spec, source))
    if spec.data.eval is not None:
        result.loss = held_out_loss(model, tokenizer, spec, base_dir)
        result.perplexity = math.exp(min(result.loss, 50.0))
    return result


def evaluate_gguf(path: str | os.PathLike[str], tokenizer: Any, spec: JobSpec, *,
                  base_dir: str | os.PathLike[str] | None = None, label: str | None = None,
                  lora: str | os.PathLike[str] | None = None) -> EvalResult:
    """Greedy answers and task metrics of a GGUF through llama.cpp (`lora`: a LoRA GGUF it applies over `path`). The
    prompt is rendered by the training tokenizer's chat template (the export's verification checks the GGUF's own
    template renders the same)."""
    from llama_cpp import Llama

    items, source = held_out(spec, base_dir)
    prompts = [tokenizer.apply_chat_template(it.prompt, tokenize=False, add_generation_prompt=True) for it in items]
    llm = Llama(model_path=str(path), n_ctx=spec.data.max_seq_len + spec.eval.max_new_tokens, verbose=False,
                n_threads=max(1, os.cpu_count() or 1), seed=0, lora_path=str(lora) if lora is not None else None)
    bos = tokenizer.bos_token
    adds_bos = bool(bos) and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]  # as training does (render.py)
    try:
        for it, text in zip(items, prompts, strict=True):
            ids = llm.tokenize(text.encode(), add_bos=adds_bos and not text.startswith(bos), special=True)
            # as token ids, for the training tokenizer to decode with the special tokens a reasoning reply is split by
            it.take(reply_of(tokenizer, generate_tokens(llm, ids, spec.eval.max_new_tokens), text))
    finally:
        llm.close()
    means, counts = score_items(items, list(spec.eval.metrics), context(spec, base_dir))
    return EvalResult(label or Path(path).stem, source, items, means, counts,
                      too_short=budget(items, tokenizer, spec, source))
