"""One loss definition (trainer/train/loss.py): the mean per trained token of the whole accumulated step, for every
model class, and token-weighted evaluation."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from trainer.data.collator import Collator
from trainer.train.loss import TokenMeanLoss, token_loss_sum

VOCAB = 97
TOKENIZER = SimpleNamespace(pad_token_id=0, eos_token_id=1)


def tiny() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    return LlamaForCausalLM(cfg)


def rows() -> list[dict[str, list[int]]]:
    """Micro-batches with very different numbers of trained tokens: 2, 20, 5 and 11."""
    g = torch.Generator().manual_seed(1)
    out = []
    for n, trained in ((12, 2), (24, 20), (9, 5), (30, 11)):
        ids = torch.randint(2, VOCAB, (n,), generator=g).tolist()
        labels = [-100] * (n - trained) + ids[n - trained:]
        out.append({"input_ids": ids, "labels": labels, "position_ids": list(range(n))})
    return out


def naive_gradient(model: LlamaForCausalLM, items: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    """d/dθ of (sum of every trained token's loss) / (number of trained tokens), the whole batch at once."""
    model.zero_grad()
    total, count = torch.zeros(()), 0
    for it in items:
        logits = model(input_ids=torch.tensor([it["input_ids"]])).logits
        s, n = token_loss_sum(logits, torch.tensor([it["labels"]]))
        total, count = total + s, count + int(n)
    (total / count).backward()
    return {k: p.grad.clone() for k, p in model.named_parameters()}


def trainer_gradient(model: LlamaForCausalLM, items: list[dict[str, list[int]]], tmp: Any,
                     loss: TokenMeanLoss | None) -> dict[str, torch.Tensor]:
    """The update of one SGD step (lr 1, no clipping, no decay) over 4 accumulated micro-batches = -gradient."""
    before = {k: p.detach().clone() for k, p in model.named_parameters()}
    args = TrainingArguments(output_dir=str(tmp), per_device_train_batch_size=1, gradient_accumulation_steps=4,
                             max_steps=1, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant",
                             weight_decay=0.0, max_grad_norm=0.0, use_cpu=True, report_to="none",
                             save_strategy="no", disable_tqdm=True, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=args, train_dataset=items, data_collator=Collator(TOKENIZER, packing=True),
                      compute_loss_func=loss)
    trainer.train()
    return {k: before[k] - p.detach() for k, p in model.named_parameters()}


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_our_loss_equals_the_models_own() -> None:
    model = tiny()
    item = rows()[1]
    out = model(input_ids=torch.tensor([item["input_ids"]]), labels=torch.tensor([item["labels"]]))
    ours = TokenMeanLoss()(out, torch.tensor([item["labels"]]))
    torch.testing.assert_close(ours, out.loss, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("accepts_loss_kwargs", [True, False])
def test_accumulated_step_is_the_token_mean_for_every_model_class(tmp_path: Any, accepts_loss_kwargs: bool) -> None:
    items = rows()
    want = naive_gradient(tiny(), items)
    model = tiny()
    model.accepts_loss_kwargs = accepts_loss_kwargs  # as e.g. Gemma 4's conditional-generation class declares
    got = trainer_gradient(model, items, tmp_path, TokenMeanLoss())
    assert max_diff(got, want) < 1e-6


def test_without_our_loss_a_class_without_loss_kwargs_weighs_micro_batches_equally(tmp_path: Any) -> None:
    """The trap our loss closes: the Trainer alone averages per-micro-batch means for such a class."""
    items = rows()
    want = naive_gradient(tiny(), items)
    model = tiny()
    model.accepts_loss_kwargs = False
    got = trainer_gradient(model, items, tmp_path, None)
    assert max_diff(got, want) > 1e-3


def test_evaluation_collects_token_weighted_sums() -> None:
    model = tiny().eval()
    loss = TokenMeanLoss()
    loss.start()
    per_batch = []
    with torch.no_grad():
        for it in rows():
            out = model(input_ids=torch.tensor([it["input_ids"]]))
            per_batch.append(float(loss(out, torch.tensor([it["labels"]]))))
    total, count = loss.finish()
    assert count == 2 + 20 + 5 + 11  # every trained label is predicted by the token before it
    token_mean = total / count
    assert abs(token_mean - sum(per_batch) / len(per_batch)) > 1e-3  # the two definitions differ here
    weights = [2, 20, 5, 11]
    assert token_mean == pytest.approx(sum(w * m for w, m in zip(weights, per_batch, strict=True)) / sum(weights))
