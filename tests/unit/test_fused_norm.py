"""`training.kernels: torch` (trainer/model/fused_norm.py), compared with the RMSNorms it replaces.

- on every tiny architecture, loaded through the trainer's own path with a LoRA adapter: the same state dict
  names, the same logits, LoRA gradients and norm-weight gradients as `kernels: none` on one packed batch;
- per norm style and dtype: the fused output and input/weight gradients against the class's own forward;
- a class we do not know, or one whose check fails, stays as it is, and a line says so;
- the option is accepted on a CPU job and needs nothing at start-up.
"""

from __future__ import annotations

import copy
import os
import random
from pathlib import Path
from typing import Any

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm  # noqa: E402
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRMSNorm  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRMSNorm  # noqa: E402

from tests.models import tiny_model  # noqa: E402
from trainer.data import Collator  # noqa: E402
from trainer.data.packing import best_fit_decreasing, row  # noqa: E402
from trainer.data.render import IGNORE, Sample  # noqa: E402
from trainer.model import fused_norm, kernels  # noqa: E402
from trainer.model import load as M  # noqa: E402
from trainer.spec.io import spec_from_dict  # noqa: E402
from trainer.spec.job import JobSpec  # noqa: E402

ARCHS = ["llama", "qwen2", "qwen3", "qwen3_moe", "gemma3", "phi3", "gpt_oss"]
NORMS = {"llama": "LlamaRMSNorm", "qwen2": "Qwen2RMSNorm", "qwen3": "Qwen3RMSNorm", "qwen3_moe": "Qwen3MoeRMSNorm",
         "gemma3": "Gemma3RMSNorm", "phi3": "Phi3RMSNorm", "gpt_oss": "GptOssRMSNorm"}


def make_spec(base: str | Path, kernels_option: str) -> JobSpec:
    return spec_from_dict({"name": "t", "base_model": str(base), "data": {"train": "unused.jsonl"},
                           "resources": {"gpu": "none"}, "model": {"dtype": "float32"},
                           "adapter": {"target_modules": "all-linear", "r": 4, "dropout": 0.0},
                           "training": {"kernels": kernels_option}})


def load(arch: str, kernels_option: str) -> Any:
    spec = make_spec(tiny_model(arch), kernels_option)
    ref = M.resolve_base_model(spec.base_model)
    model = M.add_adapter(M.load_base_model(ref, spec), spec, ref)
    for name, p in model.named_parameters():  # a norm weight that trains too (full fine-tuning, modules_to_save)
        if "norm" in name:
            p.requires_grad_(True)
    return model


def packed_batch(vocab: int, seed: int = 0) -> dict[str, Any]:
    """Two rows of best-fit packed samples, as the data pipeline makes them (position ids restart per sample)."""
    rng = random.Random(seed)
    samples = []
    for _ in range(9):
        ids = [rng.randrange(3, vocab) for _ in range(rng.randint(4, 30))]
        samples.append(Sample(ids, [IGNORE if t == 0 or rng.random() < 0.3 else i for t, i in enumerate(ids)]))
    bins = best_fit_decreasing([len(s.input_ids) for s in samples], 64)
    rows = [row([samples[i] for i in b]) for b in bins][:2]
    tokenizer = type("Tok", (), {"pad_token_id": 0, "eos_token_id": 1})()
    return Collator(tokenizer, packing=True)(rows)


def step(model: Any, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    out = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"])
    out.loss.backward()
    return out.logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_model_has_the_logits_and_gradients_of_the_original(arch: str, capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    plain = load(arch, "none")
    with torch.no_grad():  # LoRA's B starts at zero, where A's gradient is zero too: make both matter
        for name, p in plain.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    fused = load(arch, "torch")
    said = capsys.readouterr().out
    assert "training.kernels: torch: fused RMSNorm in " in said and NORMS[arch] in said and "unfused" not in said
    norms = [m for m in fused.modules() if type(m).__name__ == NORMS[arch]]
    assert norms and all("forward" in vars(m) for m in norms)  # every instance replaced...
    assert not any("forward" in vars(m) for m in plain.modules() if type(m).__name__ == NORMS[arch])
    fused.load_state_dict(plain.state_dict(), strict=True)  # ...with the state dict's names unchanged
    batch = packed_batch(fused.config.vocab_size)
    logits_plain, grads_plain = step(plain, batch)
    logits_fused, grads_fused = step(fused, batch)
    assert relative(logits_fused, logits_plain) < 1e-5
    assert grads_fused.keys() == grads_plain.keys()
    assert any("lora_A" in n for n in grads_plain) and any("norm" in n for n in grads_plain)
    for name, g in grads_plain.items():
        assert g is not None and g.abs().max() > 0, name  # the comparison below is not of zeros
        assert relative(grads_fused[name], g) < 1e-4, name


@pytest.mark.parametrize("cls", [LlamaRMSNorm, Gemma3RMSNorm, GptOssRMSNorm])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_each_style_matches_its_class_in_each_dtype(cls: type, dtype: torch.dtype) -> None:
    module = cls(96).to(dtype)
    why, worst = fused_norm.check(module, fused_norm.style_of(module), dtype)
    assert why is None and worst <= fused_norm.TOLERANCE[dtype]
    style = fused_norm.style_of(module)
    # the check has teeth: another style's semantics (Gemma's 1 + weight) is caught in each dtype
    wrong = fused_norm.Style("float", style.eps, 1.0 - style.offset if style.kind == "float" else 1.0)
    assert fused_norm.check(module, wrong, dtype)[0] is not None


def test_a_weight_that_trains_gets_the_gradient_of_the_original_across_dtypes() -> None:
    """A bf16 input to an fp32 weight (and back): dtypes of output and gradients as the original's."""
    for cls in (LlamaRMSNorm, Gemma3RMSNorm, GptOssRMSNorm):
        module = cls(32)
        torch.nn.init.normal_(module.weight)
        x = torch.randn(2, 3, 32, dtype=torch.bfloat16, requires_grad=True)
        ref = module(x)
        fused = copy.deepcopy(module)
        kernels.fuse_norms(fused)
        assert "forward" in vars(fused) and fused.forward.__self__ is fused
        got = fused(x)
        assert got.dtype == ref.dtype
        for a, b in zip(torch.autograd.grad(got.float().sum(), (x, fused.weight)),
                        torch.autograd.grad(ref.float().sum(), (x, module.weight)), strict=True):
            assert a.dtype == b.dtype and relative(a.float(), b.float()) < 2e-2
        again = copy.deepcopy(fused)  # PEFT's modules_to_save copies the module: the copy runs its own weight
        assert again.forward.__self__ is again and again.weight is not fused.weight


class MyRMSNorm(LlamaRMSNorm):  # not one of transformers' classes: unknown, whatever it inherits
    pass


def test_an_unknown_or_mismatching_class_is_left_alone(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture) -> None:
    model = torch.nn.Sequential(MyRMSNorm(16), LlamaRMSNorm(16), Gemma3RMSNorm(16), Gemma3RMSNorm(16))
    note = kernels.apply_kernels(model, "torch")
    said = capsys.readouterr().out
    assert "training.kernels: torch leaves MyRMSNorm unfused: not a class whose semantics" in said
    assert "forward" not in vars(model[0]) and "forward" in vars(model[1]) and "forward" in vars(model[3])
    assert note is not None and "1 LlamaRMSNorm, 2 Gemma3RMSNorm" in note

    monkeypatch.setitem(fused_norm.STYLES, "Gemma3RMSNorm", fused_norm.Style("cast", "eps"))  # a wrong table entry
    model = torch.nn.Sequential(Gemma3RMSNorm(16), LlamaRMSNorm(16))
    fused, unfused, _ = fused_norm.fuse_rms_norms(model)
    assert fused == {"LlamaRMSNorm": 1} and "differs from its own forward" in unfused["Gemma3RMSNorm"]
    assert "forward" not in vars(model[0])
    model = torch.nn.Sequential(MyRMSNorm(16))
    assert "fused no RMSNorm" in kernels.apply_kernels(model, "torch")


def test_torch_kernels_are_accepted_on_a_cpu_job_and_need_nothing_at_start_up() -> None:
    spec = make_spec("m", "torch")
    assert spec.resources.gpu == "none" and spec.training.kernels == "torch"
    kernels.preflight(spec, cuda=False)
