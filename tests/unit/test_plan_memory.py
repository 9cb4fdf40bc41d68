"""The memory estimate against numbers worked out by hand, the fit table, and seed 004's ladder."""

from __future__ import annotations

from typing import Any

import pytest

from launcher.plan import catalog, fit, ladder
from launcher.plan.arch import from_hf_config
from launcher.plan.ladder import RUNGS, auto_fit, climb
from launcher.plan.memory import (
    CUDA_CONTEXT,
    DS_REDUCE_BUCKET,
    NCCL_BUFFERS,
    NF4_BYTES,
    adapter_params,
    base_weights,
    estimate,
)
from launcher.plan.setup import Setup
from trainer.spec import strategy
from trainer.spec.io import spec_from_dict

# h=64, intermediate 128, 2 layers, 4 heads of 16, 2 KV heads, vocabulary 100, untied head
SMALL = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 100, "tie_word_embeddings": False}
CPU = Setup(dtype="float32", r=4, batch=2, seq_len=8, dropout=0.05, device="cpu")


def arch() -> Any:
    return from_hf_config(SMALL, "small")


def test_parameter_counts_by_hand() -> None:
    # per layer: q 64x64 + k 64x32 + v 64x32 + o 64x64 + gate/up/down 3 x 64x128 = 36,864; two layers 73,728;
    # embedding and head 2 x 100x64 = 12,800; RMSNorms 2 x 2 x 64 + 64 = 320
    assert arch().total_params == 73_728 + 12_800 + 320 == 86_848
    # LoRA r=4 per layer: q 4(64+64) + k 4(64+32) + v 4(64+32) + o 4(64+64) + 3 x 4(64+128) = 4,096
    assert adapter_params(arch(), CPU) == 2 * 4_096
    # DoRA adds a magnitude per output feature: 64 + 32 + 32 + 64 + 128 + 128 + 64 = 512 per layer
    assert adapter_params(arch(), CPU.with_(method="dora")) == 2 * 4_096 + 2 * 512
    assert adapter_params(arch(), CPU.with_(target_modules=("q_proj", "v_proj"))) == 2 * (4 * 128 + 4 * 96)


def test_cpu_float32_estimate_by_hand() -> None:
    est = estimate(arch(), CPU)
    assert est.parts["base weights"] == 86_848 * 4
    assert est.parts["adapter"] == est.parts["gradients"] == 8_192 * 4  # fp32 adapter and its gradient
    assert est.parts["optimizer (AdamW)"] == 8_192 * 8  # two fp32 moments
    # saved per token and layer, in bytes (fp32; dropout > 0: each adapter keeps a float mask + its dropped input):
    per_layer = (
        2 * (4 * 64 + 4)  # two RMSNorms: their input and 1/rms
        + 3 * 64 * (4 + 4) + 3 * 4 * 4  # q, k, v adapters: mask + input, and lora_B's r-wide input
        + 64 * 8 + 4 * 4  # o_proj adapter
        + 2 * 64 * 8 + 2 * 4 * 4  # gate, up adapters
        + 128 * 8 + 4 * 4  # down adapter
        + (2 * 64 + 2 * 64) * 4 + 4 * 4  # q, k and v (repeated to 4 heads under the packing mask), output; lse
        + 8 * 4  # sdpa's additive copy of the (packing) mask: a row of seq_len per token
        + 3 * 128 * 4  # the activation's input and output, and the up projection
    )
    assert per_layer == 7_336
    tokens = 2 * 8
    final_norm, mask = (4 * 64 + 4) * tokens, 2 * 8 * 8  # one boolean block-diagonal mask per row
    assert est.parts["activations"] == 2 * per_layer * tokens + final_norm + mask
    assert est.parts["logits + loss"] == tokens * 100 * (4 + 4 + 4)  # logits, log-softmax, its gradient
    assert "CUDA + allocator" not in est.parts  # a CPU process has no CUDA context
    assert est.total == sum(est.parts.values()) == 736_704


def test_checkpointing_keeps_layer_inputs_and_one_recomputed_layer() -> None:
    est = estimate(arch(), CPU.with_(checkpointing=True))
    tokens, layer, logits = 16, 7_336 * 16, 16 * 100 * 12
    inputs = 2 * 64 * 4 * tokens  # each layer's input
    assert est.parts["activations"] == inputs + (layer - logits) + (4 * 64 + 4) * tokens + 2 * 8 * 8
    assert est.total < estimate(arch(), CPU).total


def test_quantized_weights() -> None:
    linear = 73_728  # every linear but the head
    # NF4: half a byte, an 8-bit absmax per 64 weights, an fp32 constant per 256 blocks
    assert NF4_BYTES == 0.5 + 1 / 64 + 4 / (64 * 256)
    # QLoRA casts everything else to fp32 (prepare_model_for_kbit_training): embedding, norms, head
    qlora = Setup(quantization="4bit")
    assert base_weights(arch(), qlora) == int(linear * NF4_BYTES + (6_400 + 320 + 6_400) * 4)
    # ...which DeepSpeed casts back to bf16
    assert base_weights(arch(), qlora.with_(strategy="zero2")) == int(linear * NF4_BYTES + (6_400 + 320 + 6_400) * 2)
    # LLM.int8: a byte per weight and an fp32 scale per output row
    rows = 2 * (64 + 32 + 32 + 64 + 128 + 128 + 64)
    assert base_weights(arch(), Setup(quantization="8bit")) == int(linear + 4 * rows + (6_400 + 320 + 6_400) * 4)


def test_strategies_shard_what_they_should() -> None:
    ddp = estimate(arch(), Setup(world_size=4))
    zero2 = estimate(arch(), Setup(strategy="zero2", world_size=4))
    zero3 = estimate(arch(), Setup(strategy="zero3", world_size=4))
    fsdp = estimate(arch(), Setup(strategy="fsdp", world_size=4))
    offload = estimate(arch(), Setup(strategy="zero3", offload="all", world_size=4))
    p = adapter_params(arch(), Setup())
    assert ddp.parts["base weights"] == zero2.parts["base weights"] == 86_848 * 2  # full bf16 copy per GPU
    assert (ddp.parts["adapter"], ddp.parts["gradients"], ddp.parts["optimizer (AdamW)"]) == (p * 4, p * 4, p * 8)
    # DeepSpeed bf16: 16-bit weights and gradients, fp32 master + moments (12 bytes); ZeRO-2 shards all but weights
    assert (zero2.parts["adapter"], zero2.parts["gradients"], zero2.parts["optimizer (AdamW)"]) == (
        p * 2, p * 2 // 4, p * 12 // 4)
    assert zero3.parts["base weights"] == 86_848 * 2 // 4 and zero3.parts["adapter"] == p * 2 // 4
    assert fsdp.parts["base weights"] == 86_848 * 2 // 4 and fsdp.parts["optimizer (AdamW)"] == p * 8 // 4
    assert "gathered (ZeRO-3/FSDP)" in zero3.parts and "gathered (ZeRO-3/FSDP)" not in ddp.parts
    assert offload.parts["base weights"] == 0 and offload.parts["optimizer (AdamW)"] == 0
    # CUDA terms: context everywhere, NCCL with more than one GPU, DeepSpeed's default reduce bucket
    assert ddp.parts["CUDA + allocator"] >= CUDA_CONTEXT + NCCL_BUFFERS
    assert zero2.parts["CUDA + allocator"] >= CUDA_CONTEXT + NCCL_BUFFERS + DS_REDUCE_BUCKET * 2
    one = estimate(arch(), Setup(world_size=1))
    assert one.parts["CUDA + allocator"] < CUDA_CONTEXT + NCCL_BUFFERS


def test_gpt_oss_experts_count_in_full_and_eager_attention_is_quadratic() -> None:
    gpt_oss = from_hf_config(catalog.lookup("openai/gpt-oss-20b") or {}, "gpt-oss")
    setup = Setup(batch=1, seq_len=1024, checkpointing=True)
    est = estimate(gpt_oss, setup)
    assert est.parts["base weights"] == gpt_oss.total_params * 2  # every expert, de-quantized to bf16
    assert any("MXFP4" in n for n in est.notes) and any("eager" in n for n in est.notes)
    longer = estimate(gpt_oss, setup.with_(seq_len=2048, checkpointing=False)).parts["activations"]
    shorter = estimate(gpt_oss, setup.with_(checkpointing=False)).parts["activations"]
    assert longer > 2 * shorter  # the seq x seq attention scores grow faster than the sequence


def test_fit_table_and_deciding_gpu() -> None:
    assert fit.deciding_gpu("h100") is fit.H100_80
    assert fit.deciding_gpu("a100") is fit.A100_40 and fit.deciding_gpu("any") is fit.A10G  # the smallest there is
    rows = fit.table(arch(), Setup(strategy="zero3", world_size=16))
    assert [r.gpus for r in rows] == [1, 2, 4, 8, 16]
    assert [r.spec_layout for r in rows] == [False, False, False, False, True]
    assert rows[0].headroom(fit.H100_80) == fit.H100_80.capacity - rows[0].estimate.total


def job(**sections: Any) -> Any:
    raw = {"name": "plan-test", "base_model": "google/gemma-3-12b-it", "data": {"train": "s3://d/t.jsonl",
           "max_seq_len": 4096}, "adapter": {"method": "dora", "r": 64, "alpha": 128},
           "training": {"per_device_batch_size": 2, "gradient_checkpointing": True, "loss": "full"},
           "resources": {"gpu": "a100", "gpus_per_node": 1}}  # full logits (transformers' way): every rung needed
    for key, value in sections.items():
        raw[key] = raw.get(key, {}) | value if isinstance(value, dict) else value
    return spec_from_dict(raw)


def test_the_ladder_in_seed_004_order_each_rung_on_top_of_the_last() -> None:
    spec = job()
    gemma = from_hf_config(catalog.lookup(spec.base_model) or {}, "gemma")
    rungs = climb(spec, gemma, fit.A100_40.capacity)
    # ZeRO-3 on top of QLoRA is refused (trainer/spec/strategy.py: not proven), so that rung is not offered
    assert [r.label for r in rungs] == [label for label, _ in RUNGS if label != "ZeRO-3"] + ["more GPUs"]
    assert rungs[0].overrides == ("data.max_seq_len=2048",)
    assert rungs[1].overrides == ("adapter.r=32", "adapter.alpha=64")  # alpha / r kept
    assert rungs[2].overrides == ("adapter.method=lora",)
    assert rungs[3].overrides == ("adapter.target_modules=[q_proj,k_proj,v_proj,o_proj]",)
    assert rungs[4].overrides == ("model.quantization=4bit",)
    last = rungs[-1].spec  # cumulative: every earlier rung is in the last spec
    assert (last.data.max_seq_len, last.adapter.r, last.adapter.method, last.model.quantization,
            last.training.strategy) == (2048, 32, "lora", "4bit", "ddp")
    assert all(strategy.check(r.spec) == [] for r in rungs)
    totals = [r.total for r in rungs if r.helps]
    assert totals == sorted(totals, reverse=True) and len(set(totals)) == len(totals)
    applied = auto_fit(rungs)
    assert applied is not None and applied[-1].fits and not any(r.fits for r in applied[:-1])
    assert [r.label for r in applied] == [label for label, _ in RUNGS[:5]]  # fits from QLoRA on


def test_without_qlora_the_ladder_goes_on_to_zero3_and_more_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ladder, "RUNGS", [(label, step) for label, step in RUNGS if label != "QLoRA (4bit)"])
    spec = job()
    rungs = climb(spec, from_hf_config(catalog.lookup(spec.base_model) or {}, "gemma"), fit.A100_40.capacity)
    assert [r.label for r in rungs][-2:] == ["ZeRO-3", "more GPUs"]
    assert rungs[-2].overrides == ("training.strategy=zero3",)
    last = rungs[-1].spec
    assert (last.adapter.method, last.training.strategy, last.model.quantization) == ("lora", "zero3", "none")
    assert last.resources.world_size > 1


def test_a_rung_that_would_not_help_is_skipped_not_applied() -> None:
    """QLoRA on gpt-oss: bitsandbytes quantizes linears only, and the fp32 upcast of QLoRA grows the experts."""
    spec = job(base_model="openai/gpt-oss-20b", adapter={"method": "lora", "r": 8, "alpha": 16},
               training={"per_device_batch_size": 1, "gradient_checkpointing": True},
               resources={"gpu": "a100", "gpus_per_node": 1})
    gpt_oss = from_hf_config(catalog.lookup(spec.base_model) or {}, "gpt-oss")
    rungs = {r.label: r for r in climb(spec, gpt_oss, fit.A100_40.capacity)}
    assert not rungs["QLoRA (4bit)"].helps
    assert rungs["ZeRO-3"].spec.model.quantization == "none"  # the useless rung was not carried forward
    assert "lower rank" not in rungs and "no DoRA" not in rungs  # r=8 is the floor; no DoRA to drop


def test_auto_fit_is_none_when_no_rung_fits() -> None:
    spec = job(data={"max_seq_len": 131072})
    gemma = from_hf_config(catalog.lookup(spec.base_model) or {}, "gemma")
    rungs = climb(spec, gemma, fit.A100_40.capacity)
    assert not any(r.fits for r in rungs) and auto_fit(rungs) is None
