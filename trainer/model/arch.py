"""How to load a base model, decided from its `config.json` alone (torch-free, so the rules are testable and
the launcher could use them).

Three things in a checkpoint's config change how kubetune loads it:
- `quantization_config.quant_method: mxfp4` (openai/gpt-oss-20b / -120b ship their experts in MXFP4): loaded
  with `Mxfp4Config(dequantize=True)`, i.e. de-quantized to the spec's dtype, so LoRA trains on dense weights
  and the merge lands on them; transformers cannot put bitsandbytes on top in the same load.
- `quant_method: bitsandbytes` (a pre-quantized QLoRA base such as unsloth/gpt-oss-20b-unsloth-bnb-4bit):
  loaded as it is, never quantized a second time; the spec's `model.quantization` must say the same bits.
- `model_type: gpt_oss`: attention with learned sinks, which transformers 5.23 runs with `eager` (also
  flex attention and hub kernels, not `sdpa` and not the flash-attn 2 package), and fused 3-D expert tensors
  that only `adapter.target_parameters` adapts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trainer.model.errors import ModelError

# Fused expert tensors (nn.Parameter, not nn.Linear) per model_type: what `adapter.target_parameters` names.
EXPERT_PARAMETERS: dict[str, tuple[str, ...]] = {"gpt_oss": ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")}
# transformers 5.23, GptOssPreTrainedModel: _supports_sdpa = False; flash attention only through hub kernels
# that take the sinks (`kernels-community/vllm-flash-attn3`, needs the `kernels` package). Eager runs everywhere.
NO_SDPA_OR_FA2 = {"gpt_oss": "eager"}

Quantization = Literal["none", "4bit", "8bit"]


@dataclass(frozen=True)
class LoadPlan:
    """What `from_pretrained` gets: `quantize` is `bnb` (our BitsAndBytesConfig from the spec), `checkpoint` (the
    checkpoint's own bitsandbytes config, as saved), `mxfp4-dequantize` or `none`."""

    quantize: Literal["none", "bnb", "checkpoint", "mxfp4-dequantize"]
    attn_implementation: str
    notes: tuple[str, ...] = ()


def read_config(location: str | Path, local: bool = True) -> dict[str, Any]:
    """A checkpoint's config.json as a dict (a hub id: fetched alone, not the weights); {} when there is none."""
    if local:
        path = Path(location) / "config.json"
        return json.loads(path.read_text()) if path.is_file() else {}
    from transformers import PretrainedConfig  # light enough: no torch at import of this call path

    config, _ = PretrainedConfig.get_config_dict(str(location))
    return config


def prequantized(config: dict[str, Any]) -> tuple[str, Quantization] | None:
    """(quant_method, bits) of a checkpoint saved quantized, else None. bits is "none" unless bitsandbytes."""
    q = config.get("quantization_config") or {}
    method = q.get("quant_method")
    if not method and (q.get("load_in_4bit") or q.get("load_in_8bit")):
        method = "bitsandbytes"
    if not method:
        return None
    if method == "bitsandbytes":
        return method, "4bit" if q.get("load_in_4bit") or q.get("_load_in_4bit") else "8bit"
    return method, "none"


def quantization_plan(config: dict[str, Any], quantization: Quantization) -> Literal[
        "none", "bnb", "checkpoint", "mxfp4-dequantize"]:
    """How the weights are loaded, given the spec's `model.quantization`; refuses what cannot work."""
    saved = prequantized(config)
    if saved is None:
        return "bnb" if quantization != "none" else "none"
    method, bits = saved
    if method == "mxfp4":
        if quantization != "none":
            raise ModelError(
                f"model.quantization is {quantization!r} but this base model's experts are stored in MXFP4, which "
                "kubetune de-quantizes to model.dtype on load; bitsandbytes cannot quantize it again in the same "
                "load. Set `model.quantization: none` (bf16 LoRA), or for QLoRA use a bitsandbytes checkpoint "
                "(e.g. unsloth/gpt-oss-20b-unsloth-bnb-4bit) with `model.quantization: 4bit`")
        return "mxfp4-dequantize"
    if method == "bitsandbytes":
        if quantization != bits:
            raise ModelError(
                f"model.quantization is {quantization!r} but this base model is saved already quantized by "
                f"bitsandbytes ({bits}); it is loaded as it is, never quantized again: set "
                f"`model.quantization: {bits}`, or use the unquantized checkpoint")
        return "checkpoint"
    raise ModelError(f"base model is saved quantized with {method!r}, which kubetune cannot train on: use the "
                     "unquantized checkpoint (or a bitsandbytes one with `model.quantization`)")


def attention_for(config: dict[str, Any], requested: str) -> tuple[str, str | None]:
    """The attention implementation to load with, and a note when it is not the requested one."""
    model_type = config.get("model_type", "")
    use = NO_SDPA_OR_FA2.get(model_type)
    if use is None or requested in ("eager", use):
        return requested, None
    return use, (f"model.attn_implementation {requested} -> {use}: {model_type}'s attention has learned sinks, which "
                 f"transformers runs with eager attention (it has no sdpa path for {model_type} and the flash-attn 2 "
                 "package takes no sinks)")


def experts_note(config: dict[str, Any], target_parameters: list[str] | None) -> str | None:
    """The log line for an MoE base with fused experts that the adapter leaves alone (or only partly adapts)."""
    experts = EXPERT_PARAMETERS.get(config.get("model_type", ""))
    if not experts:
        return None
    wanted = list(target_parameters or [])
    # PEFT adapts a parameter whose full name is a target or ends in "." + it (model.layers.N.<expert>).
    missing = [e for e in experts if not any(e == t or e.endswith("." + t) or t.endswith("." + e) for t in wanted)]
    if not missing:
        return None
    return (f"{config['model_type']}: the experts' fused tensors {', '.join(missing)} get no adapter (target_modules "
            f"reaches linear layers only, here attention); to adapt them set `adapter.target_parameters: "
            f"[{', '.join(experts)}]` (with `adapter.dropout: 0`)")


def load_plan(config: dict[str, Any], quantization: Quantization, attn_implementation: str,
              target_parameters: list[str] | None) -> LoadPlan:
    attn, attn_note = attention_for(config, attn_implementation)
    notes = tuple(n for n in (attn_note, experts_note(config, target_parameters)) if n)
    return LoadPlan(quantization_plan(config, quantization), attn, notes)
