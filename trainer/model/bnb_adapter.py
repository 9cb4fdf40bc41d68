"""The one place kubetune reaches into bitsandbytes below its public API (pinned: bitsandbytes 0.50).

- `Linear4bit.support_avx512bf16_for_cpu`: a per-layer switch bitsandbytes sets from the CPU's features
  (`bitsandbytes.functional.has_avx512bf16`), not a documented setting; there is no public way to turn the
  repacking it enables off (`keep_4bit_weights_trainable`).

tests/unit/test_adapters.py asserts that this attribute still exists and is still read by the layer's
forward, so an upgrade that renames or drops it fails there, loudly, instead of silently training wrong.
"""

from __future__ import annotations

from typing import Any


def keep_4bit_weights_trainable(model: Any) -> None:
    """bitsandbytes 0.50 on CPUs with AVX512-BF16: a forward in eval mode without grad repacks every
    4-bit weight into an inference-only layout (`gemv_4bit`, no autograd), for good. Any later training
    step then back-propagates nothing through the base layers — silently wrong LoRA gradients. That
    happens on every before-training sample and every evaluation. The switch is a per-layer attribute
    bitsandbytes sets from the CPU's features; we turn it off. tests/unit/test_model.py checks both the
    trap and the fix."""
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
