"""`training.loss: chunked` (trainer/train/head.py) computes what the full logits compute: the loss and the gradients
(LoRA weights, input embeddings) on tiny real-architecture models (Llama, Qwen2, Gemma 3 with a soft cap, Gemma 3's
conditional-generation class), over packed rows of several completions-only samples, in several chunks; and through a
real Trainer with gradient accumulation, the update is the token mean of the whole accumulated batch."""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoModelForCausalLM,
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3TextConfig,
    LlamaConfig,
    Qwen2Config,
    SiglipVisionConfig,
    Trainer,
    TrainingArguments,
)

from trainer.data.collator import Collator
from trainer.train import head as head_mod
from trainer.train.loss import TokenMeanLoss, token_loss_sum

VOCAB = 301
PAD = types.SimpleNamespace(pad_token_id=0, eos_token_id=1)
SHAPE = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "max_position_embeddings": 256, "pad_token_id": 0, "bos_token_id": 2,
         "eos_token_id": 1}
ROWS = 7  # rows per chunk: fewer than the trained tokens of a batch (about 60), so several chunks


def gemma3_text() -> Gemma3TextConfig:
    return Gemma3TextConfig(**SHAPE, num_key_value_heads=1, head_dim=16, query_pre_attn_scalar=16, sliding_window=8,
                            layer_types=["sliding_attention", "full_attention"], final_logit_softcapping=3.0)


def build(arch: str) -> Any:
    torch.manual_seed(0)
    if arch == "llama":
        model = AutoModelForCausalLM.from_config(LlamaConfig(**SHAPE, num_key_value_heads=2, tie_word_embeddings=False))
    elif arch == "qwen2":
        model = AutoModelForCausalLM.from_config(Qwen2Config(**SHAPE, num_key_value_heads=2, tie_word_embeddings=True))
    elif arch == "gemma3":  # a soft cap small enough to bend these logits
        model = AutoModelForCausalLM.from_config(gemma3_text())
    else:
        vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                    image_size=28, patch_size=14)
        model = Gemma3ForConditionalGeneration(Gemma3Config(text_config=gemma3_text(), vision_config=vision,
                                                            mm_tokens_per_image=4))
    model = model.float()
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"],
                      init_lora_weights=False)  # non-zero B: the LoRA gradients are not trivially zero
    return get_peft_model(model, lora)


def sample(g: torch.Generator, n: int, trained: int) -> tuple[list[int], list[int]]:
    ids = torch.randint(3, VOCAB, (n,), generator=g).tolist()
    return ids, [-100] * (n - trained) + ids[n - trained:]  # a prompt, then a completion


def packed_items(seed: int = 1, rows: int = 3) -> list[dict[str, list[int]]]:
    """Rows of 2-3 samples each (position ids restarting at 0), labels only on each sample's completion."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for r in range(rows):
        ids, labels, pos = [], [], []
        for n, trained in ((17, 6), (23, 9), (11, 4))[: 2 + r % 2]:
            i, lab = sample(g, n + r, trained)
            ids, labels, pos = ids + i, labels + lab, pos + list(range(len(i)))
        items.append({"input_ids": ids, "labels": labels, "position_ids": pos})
    return items


def batch(items: list[dict[str, list[int]]], padding_free: bool = False) -> dict[str, torch.Tensor]:
    return Collator(PAD, packing=True, padding_free=padding_free)(items)


def run(model: Any, b: dict[str, torch.Tensor], head: head_mod.Head | None) -> tuple[torch.Tensor, dict, torch.Tensor]:
    """Loss (token mean), LoRA gradients and the gradient of the input embeddings, with or without the head."""
    model.zero_grad()
    inputs = {k: v for k, v in b.items() if k != "labels"}
    embeds = model.get_input_embeddings()(inputs.pop("input_ids")).detach().requires_grad_()
    fn = TokenMeanLoss(head)
    if head is None:
        loss = fn(model(inputs_embeds=embeds, **inputs), b["labels"])
    else:
        with head.capture():
            loss = fn(model(inputs_embeds=embeds, logits_to_keep=1, **inputs), b["labels"])
    loss.backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}  # not the vision tower's
    return loss.detach(), grads, embeds.grad.clone()


ARCHS = ["llama", "qwen2", "gemma3", "gemma3_cg"]


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_loss_and_gradients_equal_the_full_logits(arch: str) -> None:
    model = build(arch)
    head = head_mod.choose("chunked", model, sharded=None, say=pytest.fail)
    assert head is not None
    head.rows = ROWS
    b = batch(packed_items())
    trained = int((b["labels"][:, 1:] != -100).sum())
    assert trained > 3 * ROWS  # several chunks
    assert head.softcap == (3.0 if arch == "gemma3" else None)  # the conditional-generation class applies none
    want_loss, want_grads, want_embeds = run(model, b, None)
    got_loss, got_grads, got_embeds = run(model, b, head)
    assert head.checked
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-6, atol=1e-6)
    assert want_grads and set(got_grads) == set(want_grads)
    for k in want_grads:
        torch.testing.assert_close(got_grads[k], want_grads[k], rtol=1e-5, atol=1e-7, msg=k)
    torch.testing.assert_close(got_embeds, want_embeds, rtol=1e-5, atol=1e-7)
    assert float(want_embeds.abs().max()) > 0


def test_padding_free_rows_train_the_same_tokens() -> None:
    model = build("llama")
    head = head_mod.choose("chunked", model, sharded=None, say=pytest.fail)
    head.rows = ROWS
    b = batch(packed_items(), padding_free=True)
    assert b["input_ids"].shape[0] == 1
    want = run(model, b, None)
    got = run(model, b, head)
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got[2], want[2], rtol=1e-5, atol=1e-7)


def test_soft_cap_math_and_chunking_against_plain_cross_entropy() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(50, 16, requires_grad=True)
    weight = torch.randn(97, 16)
    targets = torch.randint(0, 97, (50,))
    for cap in (None, 2.5):
        for rows in (1, 7, 50, 64):
            hidden.grad = None
            got = head_mod.chunked_loss_sum(hidden, weight, targets, cap, rows)
            got.backward()
            g = hidden.grad.clone()
            hidden.grad = None
            logits = hidden.double() @ weight.double().T  # the reference in float64
            logits = torch.tanh(logits / cap) * cap if cap else logits
            want = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
            want.backward()
            assert got.dtype == torch.float32
            torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(g, hidden.grad, rtol=1e-4, atol=1e-5)


class HeadTrainer(Trainer):
    """As ResumableTrainer.compute_loss hooks the head in (trainer/train/resume.py)."""

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        return head_mod.head_loss(self.compute_loss_func, super().compute_loss, model, inputs, return_outputs,
                                  num_items_in_batch)


def trainer_update(model: Any, items: list[dict[str, list[int]]], tmp: Any, loss: TokenMeanLoss) -> dict:
    """-gradient of one SGD step (lr 1) over 3 accumulated micro-batches of one packed row each."""
    before = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
    args = TrainingArguments(output_dir=str(tmp), per_device_train_batch_size=1, gradient_accumulation_steps=3,
                             max_steps=1, learning_rate=1.0, optim="sgd", lr_scheduler_type="constant",
                             weight_decay=0.0, max_grad_norm=0.0, use_cpu=True, report_to="none",
                             save_strategy="no", disable_tqdm=True, dataloader_num_workers=0,
                             remove_unused_columns=False, average_tokens_across_devices=True)
    trainer = HeadTrainer(model=model, args=args, train_dataset=items, data_collator=Collator(PAD, packing=True),
                          compute_loss_func=loss)
    trainer.train()
    return {k: before[k] - p.detach() for k, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_accumulated_step_is_the_token_mean_of_the_whole_batch(tmp_path: Any, arch: str) -> None:
    items = packed_items(seed=2, rows=3)  # 15, 19 and 19 trained tokens: unequal micro-batches
    model = build(arch)
    model.zero_grad()
    total, count = torch.zeros(()), 0
    for it in items:  # the naive definition: every trained token of the step at once, full logits
        s, n = token_loss_sum(model(**{k: v for k, v in batch([it]).items() if k != "labels"}).logits,
                              batch([it])["labels"])
        total, count = total + s, count + int(n)
    (total / count).backward()
    want = {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}
    model = build(arch)
    head = head_mod.choose("chunked", model, sharded=None, say=pytest.fail)
    head.rows = 5
    loss = TokenMeanLoss(head)
    got = trainer_update(model, items, tmp_path, loss)
    assert loss.head is head and head.checked  # the head was used, not dropped
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7, msg=k)


def test_evaluation_collects_the_same_token_weighted_sums() -> None:
    model = build("gemma3").eval()
    head = head_mod.choose("chunked", model, sharded=None, say=pytest.fail)
    head.rows = ROWS
    sums = []
    for h in (None, head):
        fn = TokenMeanLoss(h)
        fn.start()
        with torch.no_grad():
            for it in packed_items(seed=3):
                b = batch([it])
                inputs = {k: v for k, v in b.items() if k != "labels"}
                if h is None:
                    fn(model(**inputs), b["labels"])
                else:
                    with h.capture():
                        fn(model(**inputs, logits_to_keep=1), b["labels"])
        sums.append(fn.finish())
    assert sums[0][1] == sums[1][1] > 0
    assert sums[1][0] == pytest.approx(sums[0][0], rel=1e-6)


def test_heads_it_cannot_compute_fall_back_and_say_so() -> None:
    said: list[str] = []
    model = build("llama")
    assert head_mod.choose("full", model, sharded=None, say=said.append) is None and not said
    for strategy in ("zero3", "fsdp"):  # the head's weight is gathered for the loss (test_chunked_loss_sharded.py)
        assert head_mod.choose("chunked", model, sharded=strategy, say=said.append).kind == "chunked" and not said
        assert head_mod.choose("cce", model, sharded=strategy, say=said.append).kind == "chunked"
        assert strategy in said.pop() and not said  # Cut Cross-Entropy reads the weight again in backward
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(LlamaConfig(**SHAPE, num_key_value_heads=2, tie_word_embeddings=False))
    adapted = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    assert head_mod.choose("chunked", adapted, sharded=None, say=said.append) is None
    assert "lm_head" in said[-1]


def test_a_head_that_disagrees_with_the_model_is_dropped_for_the_full_path() -> None:
    model = build("gemma3")
    head = head_mod.choose("chunked", model, sharded=None, say=pytest.fail)
    head.softcap = None  # as if transformers had added a transform the head does not know
    loss = TokenMeanLoss(head)
    b = batch(packed_items())
    calls: list[dict] = []

    def compute(m: Any, inputs: dict, return_outputs: bool, n: Any) -> Any:
        calls.append(dict(inputs))
        labels = inputs.pop("labels")
        return loss(m(**inputs), labels, num_items_in_batch=n)

    got = head_mod.head_loss(loss, compute, model, dict(b), False, None)
    want = TokenMeanLoss()(model(**{k: v for k, v in b.items() if k != "labels"}), b["labels"])
    assert loss.head is None and "logits_to_keep" not in calls[-1] and len(calls) == 2
    torch.testing.assert_close(got, want)


def test_liger_and_cce_go_to_the_fused_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    """On CPU a stand-in with the real function's signature (the kernels need CUDA): the head hands it the trained
    positions' hidden states and takes back the summed loss."""
    import inspect

    from trainer.model import kernels

    seen: list[tuple] = []

    def fused(kind: str, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
              softcap: float | None) -> torch.Tensor:
        seen.append((kind, hidden.shape, targets.shape, softcap))
        return head_mod.chunked_loss_sum(hidden, weight, targets, softcap, 8)

    assert list(inspect.signature(fused).parameters) == list(inspect.signature(
        kernels.fused_linear_cross_entropy).parameters)

    monkeypatch.setitem(sys.modules, "trainer.model.kernels", types.SimpleNamespace(fused_linear_cross_entropy=fused))
    model = build("gemma3")
    head = head_mod.choose("liger", model, sharded=None, say=pytest.fail)
    b = batch(packed_items())
    want = run(model, b, None)
    got = run(model, b, head)
    trained = int((b["labels"][:, 1:] != -100).sum())
    assert seen == [("liger", torch.Size([trained, 64]), torch.Size([trained]), 3.0)]
    torch.testing.assert_close(got[0], want[0], rtol=1e-6, atol=1e-6)


def test_the_planner_counts_the_trainers_chunk() -> None:
    from launcher.plan import activations

    for vocab in (32000, 151936, 262144, 10**7):  # one definition (trainer/spec/training.py), read by both
        assert activations.loss_chunk_rows(vocab) == head_mod.rows_per_chunk(vocab) >= 64
