"""The one place kubetune reaches into transformers below its public API (pinned: transformers 5.23).

- `config._is_quantized`: the flag transformers' quantizers set on every sub-model's config
  (`transformers.quantizers.base._assign_is_quantized`); nothing public clears it (`clear_quantized_flags`).
- `model._weight_conversions`: the load-time weight conversions a model keeps to save its weights back the same
  way (`transformers.core_model_loading`); nothing public drops one that cannot be reversed
  (`drop_irreversible_conversions`).

tests/unit/test_adapters.py asserts that transformers still sets and reads both, so an upgrade that renames
or drops them fails there, loudly.
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel


def clear_quantized_flags(model: PreTrainedModel) -> None:
    """Every (sub-)model's config says it is not quantized."""
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and getattr(module.config, "_is_quantized", False):
            module.config._is_quantized = False


def drop_irreversible_conversions(model: Any) -> None:
    """Keep only the load-time weight conversions that can be reversed (renamings and the like)."""
    kept = []
    for conversion in getattr(model, "_weight_conversions", None) or []:
        try:
            conversion.reverse_transform()
        except NotImplementedError:
            continue
        kept.append(conversion)
    if hasattr(model, "_weight_conversions"):
        model._weight_conversions = kept
