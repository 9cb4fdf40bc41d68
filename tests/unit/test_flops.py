"""Model FLOPs per token (trainer/spec/flops.py), the GPU catalog's peaks (trainer/spec/gpus.py) and the trainer's
tokens/s and MFU meter (trainer/tracking/speed.py): the formula against a hand count, against `launch plan`'s
architecture and against torch's own FLOP counter on real models; the meter's counts against a per-sample loop."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from launcher.plan.arch import from_hf_config
from trainer.spec import flops
from trainer.spec.gpus import A10G, A100_40, A100_80, B200, H100_80, H100_PCIE, H200, L40S, board

VOCAB = 300


def configs() -> dict[str, Any]:
    from transformers import (
        Gemma3TextConfig,
        GptOssConfig,
        LlamaConfig,
        Phi3Config,
        Qwen2Config,
        Qwen3MoeConfig,
    )

    shape = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": VOCAB}
    return {
        "llama": LlamaConfig(**shape, intermediate_size=128, num_key_value_heads=2, tie_word_embeddings=False),
        "qwen2": Qwen2Config(**shape, intermediate_size=128, num_key_value_heads=2),  # q/k/v biases
        "phi3": Phi3Config(**shape, intermediate_size=128, num_key_value_heads=4, pad_token_id=0),  # fused qkv and gate_up
        "gemma3": Gemma3TextConfig(**shape, intermediate_size=128, num_key_value_heads=1, head_dim=32,
                                   sliding_window=8, layer_types=["sliding_attention", "full_attention"]),
        "qwen3_moe": Qwen3MoeConfig(**shape, intermediate_size=128, num_key_value_heads=2, head_dim=16, num_experts=4,
                                    num_experts_per_tok=2, moe_intermediate_size=32, decoder_sparse_step=1),
        "gpt_oss": GptOssConfig(**shape, intermediate_size=32, num_key_value_heads=2, head_dim=16, num_local_experts=4,
                                num_experts_per_tok=2, sliding_window=8,
                                layer_types=["sliding_attention", "full_attention"]),
    }


def test_a_tiny_llama_counted_by_hand() -> None:
    config = {"model_type": "llama", "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
              "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 1000}
    cost = flops.from_config(config)
    # per layer: q 256x256, k and v 256x128, o 256x256, gate/up/down 256x512
    assert cost.matmul_params == 2 * (65536 + 2 * 32768 + 65536 + 3 * 131072) == 1179648
    assert cost.head_params == 256_000 and cost.attention_width == 256 and cost.windows == (None, None)
    # one 10-token sample, the LM head at its 4 labelled positions: 6 x weights x tokens, 6 x head x 4, and per
    # layer 6 x 2 x 256 channels x 55 attended keys (1 + 2 + ... + 10)
    assert cost.train_flops(10, 4, {None: 55}) == 6 * 1179648 * 10 + 6 * 256_000 * 4 + 2 * 6 * 2 * 256 * 55
    assert cost.with_adapter(1000).train_flops(10, 0, {None: 0}) == 6 * (1179648 + 1000) * 10


def test_a_moe_counts_only_the_routed_experts_and_the_router() -> None:
    config = {"model_type": "qwen3_moe", "hidden_size": 256, "intermediate_size": 1024, "moe_intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 64,
              "num_experts": 8, "num_experts_per_tok": 2, "decoder_sparse_step": 1, "mlp_only_layers": [1],
              "vocab_size": 1000}
    cost = flops.from_config(config)
    attention = 65536 + 2 * 32768 + 65536
    sparse = 2 * 3 * 256 * 128 + 256 * 8  # two routed experts + the router
    dense = 3 * 256 * 1024  # layer 1 is in mlp_only_layers: a dense MLP
    assert cost.matmul_params == 2 * attention + sparse + dense
    gpt = flops.from_config({"model_type": "gpt_oss", "hidden_size": 64, "intermediate_size": 32, "head_dim": 16,
                             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                             "num_local_experts": 4, "experts_per_token": 2, "vocab_size": 100, "sliding_window": 8,
                             "layer_types": ["sliding_attention", "full_attention"]})
    assert gpt.matmul_params == 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 2 * 3 * 64 * 32 + 64 * 4)
    assert gpt.windows == (8, None)


def test_the_keys_a_causal_sample_attends() -> None:
    for length in (1, 5, 8, 9, 40):
        for window in (None, 1, 3, 8):
            naive = sum(min(i + 1, window or length) for i in range(length))
            assert flops.attended_keys(length, window) == naive, (length, window)


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "gemma3", "qwen3_moe", "gpt_oss"])
def test_the_formula_is_what_torch_counts_for_a_full_fine_tune(family: str) -> None:
    """torch's FLOP counter over one forward and backward of the real model (every weight trained: 6 per weight
    and token exactly), eager attention (it computes the whole length x length score matrix, masked afterwards)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import AutoModelForCausalLM

    config = configs()[family]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", experts_implementation="eager")
    length = 24
    ids = torch.randint(0, VOCAB, (1, length))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, use_cache=False).logits.float().sum().backward()
    cost = flops.from_config(config.to_dict())
    assert counter.get_total_flops() == cost.train_flops(length, length, {w: length * length for w in cost.windows})


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "gemma3", "gpt_oss"])
def test_the_weights_per_token_are_the_planners(family: str) -> None:
    """`launch plan`'s architecture (launcher/plan/arch.py) has the same decoder matmuls and LM head."""
    config = configs()[family].to_dict()
    arch = from_hf_config(config, family)
    cost = flops.from_config(config)
    decoder = sum(lin.in_features * lin.out_features * lin.count for lin in arch.linears if lin.part != "head")
    routed = sum(f.experts * f.dim1 * f.dim2 * f.count for f in arch.fused) * arch.experts_per_token
    router = arch.num_layers * arch.num_experts * arch.hidden_size
    assert cost.matmul_params == decoder + (routed // arch.num_experts + router if arch.fused else 0)
    head = arch.lm_head
    assert head is not None and cost.head_params == head.in_features * head.out_features
    # the dense part of the launcher's deadline estimate is the same formula
    assert flops.dense_flops(arch.total_params, 10) == 6 * arch.total_params * 10
    assert flops.dense_flops(arch.total_params, 10, recompute=True) == 8 * arch.total_params * 10


def test_an_unknown_family_is_said_not_guessed() -> None:
    with pytest.raises(flops.UnknownModel, match="'gpt2'"):
        flops.from_config({"model_type": "gpt2", "n_embd": 64})


def test_gpus_by_the_names_the_driver_reports() -> None:
    names = {"NVIDIA H100 80GB HBM3": H100_80, "NVIDIA H100 PCIe": H100_PCIE, "NVIDIA H200": H200,
             "NVIDIA B200": B200, "NVIDIA A100-SXM4-80GB": A100_80, "NVIDIA A100 80GB PCIe": A100_80,
             "NVIDIA A100-SXM4-40GB": A100_40, "NVIDIA A100-PCIE-40GB": A100_40, "NVIDIA L40S": L40S,
             "NVIDIA A10G": A10G, "NVIDIA H100 NVL": None, "NVIDIA GeForce RTX 4090": None, "Tesla T4": None}
    assert {name: board(name) for name in names} == names
    assert H200.peak("bfloat16") == H200.peak("float16") == 989e12 and H200.peak("float32") == 67e12
    assert B200.peak("float32") is None  # no datasheet figure: a float32 run on it reports no MFU
