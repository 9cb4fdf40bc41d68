"""The GPU options of `training` on a machine without a GPU: what runs on CPU is compared with the path it replaces;
what cannot run is refused with the field and the fix (trainer/model/kernels.py, trainer/spec/training.py).

- padding_free: the flattened micro-batch holds exactly the padded batch's real tokens, labels and position ids,
  trains the same tokens, gives the loss of the padded batch through a real model, and carries the sequence
  boundaries transformers' flash-attention would derive from its position ids;
- compile: the compiled decoder layers (dynamo + AOT autograd; `aot_eager`, so no C++ build) train the same loss
  and gradients as the plain model, with LoRA and gradient checkpointing;
- liger / cce / compile / padding_free: refused on a CPU job by the spec, and at start-up where CUDA or the
  package is missing.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from trainer.data import Collator
from trainer.data.packing import best_fit_decreasing, row
from trainer.data.render import IGNORE, Sample
from trainer.model import kernels
from trainer.model.errors import ModelError
from trainer.spec.io import SpecError, spec_from_dict
from trainer.train.loss import token_loss_sum

TOKENIZER = SimpleNamespace(pad_token_id=0, eos_token_id=1)


def spec(**sections: Any) -> Any:
    return spec_from_dict({"name": "t", "base_model": "m", "data": {"train": "x.jsonl"}, **sections})


def packed_rows(seed: int, n: int = 23, capacity: int = 64, vocab: int = 500) -> list[dict[str, list[int]]]:
    """Rows of best-fit packed samples as the data pipeline makes them: each sample's first label -100."""
    rng = random.Random(seed)
    samples = []
    for _ in range(n):
        length = rng.randint(2, 40)
        ids = [rng.randrange(2, vocab) for _ in range(length)]
        labels = [IGNORE if t == 0 or rng.random() < 0.4 else i for t, i in enumerate(ids)]  # completions-like
        samples.append(Sample(ids, labels))
    bins = best_fit_decreasing([len(s.input_ids) for s in samples], capacity)
    return [row([samples[i] for i in b]) for b in bins]


def real_part(padded: dict[str, Any], key: str, widths: list[int]) -> list[int]:
    return [t for r, n in enumerate(widths) for t in padded[key][r, :n].tolist()]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flattened_batch_is_the_padded_batch_without_its_padding(seed: int) -> None:
    rows = packed_rows(seed)[:5]
    widths = [len(r["input_ids"]) for r in rows]
    padded = Collator(TOKENIZER, packing=True)(rows)
    flat = Collator(TOKENIZER, packing=True, padding_free=True)(rows)
    assert padded["input_ids"].shape == (5, max(widths)) and len(set(widths)) > 1  # there is padding to drop
    assert flat["input_ids"].shape == (1, sum(widths))
    for key in ("input_ids", "labels", "position_ids"):
        assert flat[key][0].tolist() == real_part(padded, key, widths), key
    trained = [(b["labels"][..., 1:] != IGNORE).sum().item() for b in (padded, flat)]
    assert trained[0] == trained[1] > 0  # the same tokens train: no sample's first token is a target of another
    assert "attention_mask" not in flat and flat["use_cache"] is False


def test_flash_kwargs_are_what_transformers_derives_from_the_position_ids() -> None:
    from transformers.modeling_flash_attention_utils import prepare_fa_kwargs_from_position_ids

    flat = Collator(TOKENIZER, packing=True, padding_free=True)(packed_rows(3)[:4])
    (cu_q, cu_k), (max_q, max_k) = prepare_fa_kwargs_from_position_ids(flat["position_ids"])
    assert flat["cu_seq_lens_q"].dtype == torch.int32
    assert flat["cu_seq_lens_q"].tolist() == cu_q.tolist() and flat["cu_seq_lens_k"].tolist() == cu_k.tolist()
    assert flat["max_length_q"] == flat["max_length_k"] == int(max_q) == int(max_k)
    assert isinstance(flat["max_length_q"], int)  # a Python int: no GPU sync to read it in every layer


def tiny_llama(vocab: int = 500) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM._from_config(config, attn_implementation="sdpa", dtype=torch.float32)


def test_flattened_batch_trains_the_padded_batchs_loss_and_gradients() -> None:
    """Under sdpa the flattened row's samples are kept apart by the position ids (the flash kwargs ride along,
    unused): its summed loss and gradients are the padded batch's."""
    model = tiny_llama()
    rows = packed_rows(4)[:4]
    results = []
    for flat in (False, True):
        batch = Collator(TOKENIZER, packing=True, padding_free=flat)(rows)
        labels = batch.pop("labels")
        model.zero_grad()
        total, count = token_loss_sum(model(**batch).logits, labels)
        total.backward()
        results.append((total.detach(), count, model.model.layers[0].mlp.up_proj.weight.grad.clone()))
    (loss_a, n_a, grad_a), (loss_b, n_b, grad_b) = results
    assert int(n_a) == int(n_b) > 0
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad_b, grad_a, rtol=1e-4, atol=1e-6)


def test_collator_for_spec_follows_training_padding_free() -> None:
    flash = {"model": {"attn_implementation": "flash_attention_2"}, "resources": {"gpu": "h100"}}
    assert Collator.for_spec(spec(**flash, training={"padding_free": True}, data={"train": "x.jsonl",
                                                                                 "packing": False}), TOKENIZER).padding_free
    assert not Collator.for_spec(spec(**flash, data={"train": "x.jsonl", "packing": False}), TOKENIZER).padding_free
    assert not Collator.for_spec(spec(), TOKENIZER).padding_free


# -- refused by the spec ------------------------------------------------------------------------------------------
def problems(**sections: Any) -> str:
    with pytest.raises(SpecError) as e:
        spec(**sections)
    return e.value.render()


def test_padding_free_without_flash_attention_is_a_spec_error() -> None:
    text = problems(training={"padding_free": True}, resources={"gpu": "h100"})
    assert "training.padding_free: true needs `model.attn_implementation: flash_attention_2`" in text
    assert "`training.padding_free: false`" in text


@pytest.mark.parametrize(("training", "fix"), [
    ({"kernels": "liger"}, "`training.kernels: none`"),
    ({"loss": "liger"}, "`training.loss: chunked`"),
    ({"loss": "cce"}, "`training.loss: chunked`"),
    ({"compile": True}, "`training.compile: false`"),
])
def test_gpu_options_on_a_cpu_job_are_spec_errors(training: dict[str, Any], fix: str) -> None:
    text = problems(training=training, resources={"gpu": "none"})
    field = next(iter(training))
    assert f"training.{field}:" in text and "runs on CUDA GPUs only" in text and fix in text


def test_gpu_options_on_a_gpu_job_validate() -> None:
    s = spec(training={"kernels": "liger", "loss": "cce", "compile": True, "padding_free": True},
             model={"attn_implementation": "flash_attention_2"}, resources={"gpu": "h100"})
    assert s.training.padding_free and s.training.kernels == "liger"


# -- refused at start-up --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("training", "field"), [
    ({"kernels": "liger"}, "training.kernels"), ({"loss": "liger"}, "training.loss"), ({"loss": "cce"}, "training.loss"),
])
def test_preflight_without_cuda_names_the_field_and_the_fix(training: dict[str, Any], field: str) -> None:
    s = spec(training=training, resources={"gpu": "h100"})
    with pytest.raises(ModelError, match=rf"{field}: `\w+` runs Triton kernels on a CUDA GPU.*--set {field}="):
        kernels.preflight(s, cuda=False)


@pytest.mark.skipif(all(kernels.importlib.util.find_spec(m) for m in ("liger_kernel", "cut_cross_entropy", "triton")),
                    reason="checks the message where the packages are missing")
@pytest.mark.parametrize(("training", "pin"), [
    ({"kernels": "liger"}, "liger-kernel==0.8.5"), ({"loss": "cce"}, "cut-cross-entropy==25.1.1"),
])
def test_preflight_on_a_gpu_without_the_package_names_it(training: dict[str, Any], pin: str) -> None:
    s = spec(training=training, resources={"gpu": "h100"})
    with pytest.raises(ModelError, match=rf"needs the Python package.*{pin}.*install"):
        kernels.preflight(s, cuda=True)


def test_preflight_refuses_compile_without_cuda_and_padding_free_without_flash_attn() -> None:
    with pytest.raises(ModelError, match="training.compile: true needs a CUDA GPU"):
        kernels.preflight(spec(training={"compile": True}, resources={"gpu": "h100"}), cuda=False)
    flat = spec(training={"padding_free": True}, model={"attn_implementation": "flash_attention_2"},
                resources={"gpu": "h100"})
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        with pytest.raises(ModelError, match="flash-attn package.*training.padding_free: false"):
            kernels.preflight(flat, cuda=True)
    kernels.preflight(spec(), cuda=False)  # the defaults need nothing


def test_fused_cross_entropy_on_cpu_tensors_is_refused() -> None:
    hidden, weight = torch.randn(4, 8), torch.randn(16, 8)
    for kind in ("liger", "cce"):
        with pytest.raises(ModelError, match=f"training.loss: `{kind}` runs Triton kernels on a CUDA GPU"):
            kernels.fused_linear_cross_entropy(kind, hidden, weight, torch.tensor([1, 2, -100, 3]), None)
    with pytest.raises(ValueError, match="unknown fused cross-entropy"):
        kernels.fused_linear_cross_entropy("chunked", hidden, weight, torch.tensor([1, 2, 3, 4]), None)


def test_apply_kernels_none_does_nothing_and_liger_needs_cuda() -> None:
    model = tiny_llama()
    assert kernels.apply_kernels(model, "none") is None
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="training.kernels: `liger`"):
            kernels.apply_kernels(model, "liger")


# -- compile ----------------------------------------------------------------------------------------------------------
def lora(checkpointing: bool) -> Any:
    from peft import LoraConfig, get_peft_model

    model = tiny_llama()
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    torch.manual_seed(1)
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))


def train_steps(model: Any, batches: list[dict[str, Any]]) -> tuple[list[float], list[torch.Tensor]]:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    losses = []
    for batch in batches:
        batch = dict(batch)
        labels = batch.pop("labels")
        total, count = token_loss_sum(model(**batch).logits, labels)
        (total / count).backward()
        opt.step()
        opt.zero_grad()
        losses.append(float((total / count).detach()))
    return losses, [p.detach().clone() for p in model.parameters() if p.requires_grad]


def test_compiled_layers_train_as_the_plain_model_with_lora_and_checkpointing() -> None:
    collate = Collator(TOKENIZER, packing=True)
    rows = packed_rows(5)
    batches = [collate(rows[:3]), collate(rows[3:6])]  # two row lengths
    plain_loss, plain_weights = train_steps(lora(True), batches)
    compiled = lora(True)
    assert kernels.compile_model(compiled, backend="aot_eager", dynamic=True) == 2
    names = [n for n, _ in compiled.named_parameters()]
    assert not any("_orig_mod" in n for n in names)  # the adapter's names (and saved files) are as without compile
    loss, weights = train_steps(compiled, batches)
    assert loss == pytest.approx(plain_loss, rel=1e-5)
    for a, b in zip(weights, plain_weights, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_compile_refuses_a_model_without_decoder_layers() -> None:
    with pytest.raises(ModelError, match="training.compile: found no decoder layer"):
        kernels.compile_model(torch.nn.Linear(2, 2))


# -- the planner ----------------------------------------------------------------------------------------------------
def test_plan_counts_liger_kernels_smaller_norm_and_mlp_activations_and_nothing_else() -> None:
    from launcher.plan.activations import activations, logits
    from launcher.plan.arch import from_hf_config
    from launcher.plan.setup import Setup

    arch = from_hf_config({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100}, "small")
    base = Setup(dtype="bfloat16", batch=2, seq_len=16)
    tokens, h, inter = 2 * 16, 64, 128
    # per token and layer: two RMSNorms keep bf16 inputs (2 bytes) instead of fp32 copies (4); the MLP keeps the
    # gate and up outputs, not the activation's output (one intermediate-size bf16 tensor less); the final norm too
    saved = 2 * (2 * 2 * h + 2 * inter) * tokens + 2 * h * tokens
    assert activations(arch, base) - activations(arch, base.with_(kernels="liger")) == saved
    assert logits(arch, base.with_(kernels="liger")) == logits(arch, base)
    spec_setup = Setup.from_spec(spec(training={"kernels": "liger"}, resources={"gpu": "h100"}))
    assert spec_setup.kernels == "liger"
