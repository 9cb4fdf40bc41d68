"""gpt-oss: what its config.json changes in loading (pure rules, no torch), the Harmony stand-in tokenizer,
LoRA on the fused experts through `adapter.target_parameters`, and the plan's count of those adapters."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from launcher.errors import UserError
from launcher.plan import catalog
from launcher.plan.arch import from_hf_config
from launcher.plan.memory import Setup, adapter_params, estimate
from trainer.model import arch as C
from trainer.spec.io import SpecError, spec_from_dict

os.environ.setdefault("HF_HUB_OFFLINE", "1")
EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]
GPT_OSS = {"model_type": "gpt_oss"}
MXFP4 = {**GPT_OSS, "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": ["model.layers.*.self_attn"]}}
BNB4 = {**GPT_OSS, "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True,
                                           "bnb_4bit_quant_type": "nf4"}}


def spec(**adapter: Any) -> Any:
    return spec_from_dict({"name": "t", "base_model": "openai/gpt-oss-20b", "data": {"train": "x.jsonl"},
                           "adapter": adapter})


# -- the loading rules, from config.json alone -----------------------------------------------------
def test_mxfp4_checkpoint_is_dequantized_and_cannot_take_bitsandbytes_on_top() -> None:
    assert C.prequantized(MXFP4) == ("mxfp4", "none")
    assert C.quantization_plan(MXFP4, "none") == "mxfp4-dequantize"
    with pytest.raises(C.ModelError, match=r"model.quantization is '4bit'.*MXFP4.*`model.quantization: none`"):
        C.quantization_plan(MXFP4, "4bit")


def test_prequantized_bitsandbytes_is_loaded_as_saved_and_the_spec_must_say_its_bits() -> None:
    assert C.prequantized(BNB4) == ("bitsandbytes", "4bit")
    assert C.quantization_plan(BNB4, "4bit") == "checkpoint"  # never quantized a second time
    for wrong in ("none", "8bit"):
        with pytest.raises(C.ModelError, match=r"already quantized by bitsandbytes \(4bit\).*`model.quantization: 4bit`"):
            C.quantization_plan(BNB4, wrong)  # type: ignore[arg-type]
    legacy = {"quantization_config": {"load_in_8bit": True}}  # old configs without quant_method
    assert C.prequantized(legacy) == ("bitsandbytes", "8bit") and C.quantization_plan(legacy, "8bit") == "checkpoint"


def test_plain_checkpoints_follow_the_spec_and_other_methods_are_refused() -> None:
    assert C.prequantized(GPT_OSS) is None
    assert C.quantization_plan(GPT_OSS, "none") == "none" and C.quantization_plan(GPT_OSS, "4bit") == "bnb"
    with pytest.raises(C.ModelError, match="saved quantized with 'gptq'"):
        C.quantization_plan({"quantization_config": {"quant_method": "gptq"}}, "none")


@pytest.mark.parametrize("requested", ["sdpa", "flash_attention_2"])
def test_gpt_oss_attention_runs_eager_and_says_why(requested: str) -> None:
    attn, note = C.attention_for(GPT_OSS, requested)
    assert attn == "eager" and note is not None
    assert note.startswith(f"model.attn_implementation {requested} -> eager") and "sinks" in note
    assert C.attention_for(GPT_OSS, "eager") == ("eager", None)
    assert C.attention_for({"model_type": "llama"}, requested) == (requested, None)


def test_experts_left_alone_are_named_with_the_fix() -> None:
    note = C.experts_note(GPT_OSS, None)
    assert note is not None and "get no adapter" in note
    assert "adapter.target_parameters: [mlp.experts.gate_up_proj, mlp.experts.down_proj]" in note
    assert C.experts_note(GPT_OSS, EXPERTS) is None
    assert C.experts_note(GPT_OSS, ["gate_up_proj", "experts.down_proj"]) is None  # PEFT's suffix matching
    partly = C.experts_note(GPT_OSS, ["gate_up_proj"])
    assert partly is not None and "mlp.experts.down_proj get no adapter" in partly
    assert C.experts_note({"model_type": "llama"}, None) is None
    plan = C.load_plan(MXFP4, "none", "sdpa", None)
    assert (plan.quantize, plan.attn_implementation, len(plan.notes)) == ("mxfp4-dequantize", "eager", 2)


# -- the spec --------------------------------------------------------------------------------------
def test_target_parameters_need_plain_lora_and_the_error_names_each_field() -> None:
    assert spec(target_parameters=EXPERTS, dropout=0).adapter.target_parameters == EXPERTS
    with pytest.raises(SpecError) as e:
        spec(target_parameters=EXPERTS, method="dora")
    message = str(e.value)
    assert "target_parameters" in message and "`method: dora`" in message and "`dropout: 0.05`" in message
    assert "`adapter.dropout: 0`" in message
    with pytest.raises(SpecError, match="init: pissa"):
        spec(target_parameters=EXPERTS, dropout=0, init="pissa")
    with pytest.raises(SpecError, match="must name at least one parameter"):
        spec(target_parameters=[], dropout=0)


# -- the plan: LoRA on fused experts counted as PEFT counts it ----------------------------------------
def _peft_count(config: dict[str, Any], device: str, **lora: Any) -> int:
    import copy

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = copy.deepcopy(config)
    fields.pop("quantization_config", None)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(fields.pop("model_type"), **fields))
    peft_model = get_peft_model(model, LoraConfig(lora_dropout=0.0, **lora))
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


@pytest.mark.parametrize("targets", [EXPERTS, ["gate_up_proj"], ["experts.down_proj"]])
def test_plan_counts_target_parameters_like_peft_on_the_real_gpt_oss_20b(targets: list[str]) -> None:
    config = catalog.lookup("openai/gpt-oss-20b")
    assert config is not None
    arch = from_hf_config(config, "openai/gpt-oss-20b")
    setup = Setup(r=16, target_modules="all-linear", target_parameters=tuple(targets), dropout=0.0)
    expected = _peft_count(config, "meta", r=16, target_modules="all-linear", target_parameters=targets)
    assert adapter_params(arch, setup) == expected
    assert adapter_params(arch, setup) > adapter_params(arch, setup.with_(target_parameters=()))


def test_plan_names_target_parameters_that_match_nothing() -> None:
    arch = from_hf_config(catalog.lookup("openai/gpt-oss-20b") or {}, "gpt-oss")
    with pytest.raises(UserError, match=r"adapter.target_parameters: mlp.experts.up_proj match no fused parameter.*"
                                        r"gate_up_proj"):
        adapter_params(arch, Setup(target_parameters=("mlp.experts.up_proj",)))


def test_plan_keeps_the_merged_experts_of_target_parameters_until_backward() -> None:
    arch = from_hf_config(catalog.lookup("openai/gpt-oss-20b") or {}, "gpt-oss")
    plain = Setup(r=16, dropout=0.0, seq_len=512, batch=1, attn="eager")
    adapted = plain.with_(target_parameters=tuple(EXPERTS))
    stack = arch.num_experts * 3 * arch.hidden_size * arch.intermediate_size * 2  # gate_up + down, bf16
    grown = estimate(arch, adapted).parts["activations"] - estimate(arch, plain).parts["activations"]
    assert grown == stack * arch.num_layers
    checkpointed = (estimate(arch, adapted.with_(checkpointing=True)).parts["activations"]
                    - estimate(arch, plain.with_(checkpointing=True)).parts["activations"])
    assert checkpointed == stack


# -- the Harmony stand-in tokenizer ------------------------------------------------------------------
def test_harmony_standin_has_gpt_oss_special_tokens_roles_and_template() -> None:
    from tests.resources import HARMONY_SPECIALS, end_of_turn, tokenizer_for
    from trainer.data.render import end_of_turn as rendered_end_of_turn

    tok = tokenizer_for("harmony")
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|startoftext|>", "<|return|>", "<|endoftext|>")
    special = {t.content for t in tok.added_tokens_decoder.values() if t.special}
    assert set(HARMONY_SPECIALS) <= special
    for token in HARMONY_SPECIALS:  # one id each, also inside text
        assert tok(f"a{token}b", add_special_tokens=False).input_ids[1] == tok.convert_tokens_to_ids(token)
    conversation = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    text = tok.apply_chat_template(conversation, tokenize=False)
    assert text.endswith("<|start|>user<|message|>Hi<|end|><|start|>assistant<|channel|>final<|message|>Hello.<|return|>")
    ids = tok(text).input_ids
    assert ids[0] == tok.convert_tokens_to_ids("<|start|>")  # no BOS added: gpt-oss's template writes none
    assert end_of_turn("harmony") == rendered_end_of_turn(tok) == tok.eos_token


# -- the trainer on a tiny gpt-oss -------------------------------------------------------------------
def _tiny_spec(base: Path, **adapter: Any) -> Any:
    return spec_from_dict({"name": "t", "base_model": str(base), "data": {"train": "x.jsonl"},
                           "resources": {"gpu": "none"}, "model": {"dtype": "float32"},
                           "adapter": {"r": 4, **adapter}})


def test_target_parameters_adapt_the_experts_and_the_default_logs_how(capsys: pytest.CaptureFixture[str]) -> None:
    from peft.tuners.lora import ParamWrapper

    from tests.models import tiny_model
    from trainer.model import load as M

    base = tiny_model("gpt_oss")
    ref = M.resolve_base_model(str(base))
    plain = M.add_adapter(M.load_base_model(ref, _tiny_spec(base)), _tiny_spec(base), ref)
    out = capsys.readouterr().out
    assert "model.attn_implementation sdpa -> eager" in out
    assert "adapter.target_parameters: [mlp.experts.gate_up_proj, mlp.experts.down_proj]" in out
    assert not any(isinstance(m, ParamWrapper) for m in plain.modules())

    s = _tiny_spec(base, dropout=0, target_parameters=EXPERTS)
    model = M.add_adapter(M.load_base_model(ref, s), s, ref)
    assert "get no adapter" not in capsys.readouterr().out
    wrapped = {m.parameter_name for m in model.modules() if isinstance(m, ParamWrapper)}
    assert wrapped == {"gate_up_proj", "down_proj"}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("experts" in n and "lora_A" in n for n in trainable) and all("lora_" in n for n in trainable)
    arch = from_hf_config(C.read_config(base), "tiny")
    assert model.get_nb_trainable_parameters()[0] == adapter_params(
        arch, Setup(r=4, dropout=0.0, target_parameters=tuple(EXPERTS)))


def test_target_parameters_that_match_nothing_name_the_fused_ones() -> None:
    from tests.models import tiny_model
    from trainer.model import load as M

    base = tiny_model("gpt_oss")
    ref = M.resolve_base_model(str(base))
    s = _tiny_spec(base, dropout=0, target_parameters=["mlp.experts.up_proj"])
    with pytest.raises(M.ModelError, match=r"\['mlp.experts.up_proj'\] match no parameter.*mlp.experts.gate_up_proj"):
        M.add_adapter(M.load_base_model(ref, s), s, ref)
