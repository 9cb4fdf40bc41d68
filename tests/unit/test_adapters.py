"""The private APIs of our dependencies that kubetune still uses, each behind its one adapter module
(trainer/model/bnb_adapter.py, trainer/model/hf_adapter.py): what each relies on must still be there.
When one of these fails after an upgrade, the adapter (and what it works around) needs a look."""

from __future__ import annotations

import inspect
import types

import pytest
import torch


def test_bitsandbytes_still_has_the_cpu_repacking_switch() -> None:
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(16, 16, compute_dtype=torch.float32)
    assert hasattr(layer, "support_avx512bf16_for_cpu"), "bitsandbytes renamed or dropped the CPU repacking switch"
    assert "self.support_avx512bf16_for_cpu" in inspect.getsource(bnb.nn.Linear4bit.forward), \
        "Linear4bit.forward no longer reads the switch bnb_adapter turns off"


def test_the_bnb_adapter_turns_the_switch_off_on_every_4bit_layer() -> None:
    import bitsandbytes as bnb

    from trainer.model.bnb_adapter import keep_4bit_weights_trainable

    model = torch.nn.Sequential(bnb.nn.Linear4bit(16, 16), torch.nn.Linear(16, 16), bnb.nn.Linear4bit(16, 8))
    for m in model:
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = True
    keep_4bit_weights_trainable(model)
    assert [m.support_avx512bf16_for_cpu for m in model if isinstance(m, bnb.nn.Linear4bit)] == [False, False]


def test_transformers_still_sets_and_reads_what_the_hf_adapter_changes() -> None:
    from transformers import core_model_loading
    from transformers.quantizers import base

    assert "config._is_quantized = True" in inspect.getsource(base._assign_is_quantized), \
        "transformers no longer marks configs quantized through `config._is_quantized`"
    source = inspect.getsource(core_model_loading)
    assert "model._weight_conversions = " in source and 'getattr(model, "_weight_conversions"' in source, \
        "transformers no longer keeps a model's load-time conversions in `model._weight_conversions`"
    assert callable(getattr(core_model_loading.WeightConverter, "reverse_transform", None))


def test_the_hf_adapter_clears_the_flags_and_drops_only_irreversible_conversions() -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainer.model import hf_adapter

    config = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1)
    model = LlamaForCausalLM(config)
    model.config._is_quantized = True
    hf_adapter.clear_quantized_flags(model)
    assert model.config._is_quantized is False

    def conversion(reversible: bool) -> types.SimpleNamespace:
        def reverse() -> None:
            if not reversible:
                raise NotImplementedError

        return types.SimpleNamespace(reverse_transform=reverse, reversible=reversible)

    model._weight_conversions = [conversion(True), conversion(False), conversion(True)]
    hf_adapter.drop_irreversible_conversions(model)
    assert [c.reversible for c in model._weight_conversions] == [True, True]
    plain = torch.nn.Linear(2, 2)
    hf_adapter.drop_irreversible_conversions(plain)  # a model without conversions stays without
    assert not hasattr(plain, "_weight_conversions")


def test_the_gate_reads_the_gguf_vocabulary_through_llama_cpps_public_api() -> None:
    """trainer/export/verify.py: token texts and end-of-generation tokens without `Llama._model`."""
    from llama_cpp import Llama

    from tests.resources import MissingResource, gemma3_gguf
    from trainer.export.verify import _gguf_token, _vocab

    try:
        path = gemma3_gguf()
    except MissingResource as e:
        pytest.fail(str(e))
    llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
    try:
        import llama_cpp

        eos, bos = llm.token_eos(), llm.token_bos()
        assert (_gguf_token(llm, eos), _gguf_token(llm, bos)) == ("<eos>", "<bos>")
        assert _gguf_token(llm, None) is None and _gguf_token(llm, -1) is None
        assert llama_cpp.llama_vocab_is_eog(_vocab(llm), eos)
        assert not llama_cpp.llama_vocab_is_eog(_vocab(llm), llm.tokenize(b"hello", add_bos=False)[0])
    finally:
        llm.close()
