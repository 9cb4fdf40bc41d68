"""The adapter merged into its base, with everything a runtime needs to chat with the result.

The base is loaded as training saw it: in the spec's dtype, de-quantized from a `.gguf` or from
MXFP4 (gpt-oss), and for QLoRA (`model.quantization: 4bit|8bit`) quantized by bitsandbytes and
de-quantized again, so the adapter lands on the very weights it was trained against (peft #2321),
not on the original ones. A checkpoint saved already quantized by bitsandbytes (e.g.
unsloth/gpt-oss-20b-unsloth-bnb-4bit) has no original weights: it is de-quantized, and that is all.
Adapters on parameters (`adapter.target_parameters`, gpt-oss's fused experts) merge like the others.
The tokenizer saved by training (with its chat template) goes along, as do the base's
sentencepiece model (llama.cpp's converter needs it for SPM vocabularies), a generation config
whose `eos_token_id` holds both EOS and the template's end-of-turn token, and `export_info.json`.
The merged tokenizer renders with the job's `data.template_date` (trainer/data/template_date.py), as
training did: the golden conversations, the Modelfile probes and the task metrics all use it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.data import template_date
from trainer.data.render import stop_tokens
from trainer.export import vocab
from trainer.export.errors import ExportError
from trainer.model import hf_adapter
from trainer.model import load as models
from trainer.spec.job import JobSpec

AUX_TOKENIZER_FILES = ("tokenizer.model", "added_tokens.json", "special_tokens_map.json")


@dataclass
class Merged:
    path: Path
    tokenizer: Any
    eos: list[str]  # EOS and the chat template's end of turn, as token strings (render.stop_tokens)
    seconds: float
    qlora_weight_delta: float | None = None  # QLoRA: |merged(dequantized base) - merged(original)| / |merged|


def load_dense_base(spec: JobSpec, ref: models.BaseModelRef, quantized_like_training: bool) -> torch.nn.Module:
    """The base in the spec's dtype; QLoRA: through the same bitsandbytes round trip as training (always, for a
    checkpoint saved quantized)."""
    plan = models.load_plan(ref, spec).quantize
    if plan == "checkpoint" or (quantized_like_training and plan == "bnb"):
        model = models.load_base_model(ref, spec)
        model = model.dequantize()  # bitsandbytes weights -> the dense values the adapter was trained on
        _forget_quantized_loading(model)
        return model.to(models.DTYPES[spec.model.dtype])
    dense = spec.model_copy(update={"model": spec.model.model_copy(update={"quantization": "none"})})
    return models.load_base_model(ref, dense)


def _forget_quantized_loading(model: torch.nn.Module) -> None:
    """A checkpoint saved by bitsandbytes loads through transformers' `Bnb4bitDeserialize` weight conversion, which
    the model keeps (`_weight_conversions`) to write its weights back the same way; it has no reverse, so after
    `dequantize()` `save_pretrained` fails with NotImplementedError (measured on transformers 5.23). The weights
    are dense now: drop the conversions that cannot be reversed; renamings and other reversible ones stay."""
    hf_adapter.drop_irreversible_conversions(model)


def _merge_into(base: torch.nn.Module, adapter_dir: Path) -> torch.nn.Module:
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(base, str(adapter_dir))
    except (ValueError, KeyError, RuntimeError) as e:
        raise ExportError(f"the adapter in {adapter_dir} does not fit base model: {e}; export with the base_model "
                          "the adapter was trained on") from None
    return peft_model.merge_and_unload(safe_merge=True)


def _weight_delta(a: torch.nn.Module, b: torch.nn.Module) -> float:
    num = den = 0.0
    sb = b.state_dict()
    for name, wa in a.state_dict().items():
        if name in sb and wa.is_floating_point():
            num += float((wa.float() - sb[name].float()).pow(2).sum())
            den += float(wa.float().pow(2).sum())
    return (num / den) ** 0.5 if den else 0.0


def merge(spec: JobSpec, adapter_dir: Path, tokenizer_dir: Path, out: Path, base_dir: Path | None = None,
          measure_qlora_delta: bool = True) -> Merged:
    """Merge `adapter_dir` into the spec's base model and save a complete HF folder at `out`."""
    started = time.perf_counter()
    ref = models.resolve_base_model(spec.base_model, base_dir)
    merged = _merge_into(load_dense_base(spec, ref, quantized_like_training=True), adapter_dir)
    delta = None
    if models.load_plan(ref, spec).quantize == "bnb" and measure_qlora_delta:  # original weights exist
        naive = _merge_into(load_dense_base(spec, ref, quantized_like_training=False), adapter_dir)
        delta = _weight_delta(merged, naive)
        del naive
    tokenizer, eos = _save(merged, spec, ref, tokenizer_dir, out, delta, weights=True)
    return Merged(out, tokenizer, eos, time.perf_counter() - started, delta)


def save_base(spec: JobSpec, tokenizer_dir: Path, out: Path, base_dir: Path | None = None,
              weights: bool = True) -> tuple[Merged, torch.nn.Module]:
    """The base alone, loaded as `merge` loads it (QLoRA: the same round trip), saved like a merged folder with the
    training tokenizer (`weights=False`: config, tokenizer and generation config only); and the loaded model.
    What `export.mode: adapters` converts the shared base GGUF from and gates the adapter against."""
    started = time.perf_counter()
    ref = models.resolve_base_model(spec.base_model, base_dir)
    base = load_dense_base(spec, ref, quantized_like_training=True)
    tokenizer, eos = _save(base, spec, ref, tokenizer_dir, out, None, weights=weights)
    return Merged(out, tokenizer, eos, time.perf_counter() - started), base


def _save(model: Any, spec: JobSpec, ref: models.BaseModelRef, tokenizer_dir: Path, out: Path, delta: float | None,
          weights: bool) -> tuple[Any, list[str]]:
    if out.exists():
        shutil.rmtree(out)
    model.config.use_cache = True
    if weights:
        model.save_pretrained(out)
    else:
        model.config.save_pretrained(out)
    tokenizer = template_date.pin(_save_tokenizer(tokenizer_dir, ref, out), spec.data.template_date)
    eos = _generation_eos(model, tokenizer, ref, out)
    info = {"base_model": spec.base_model, "dtype": spec.model.dtype, "quantization": spec.model.quantization,
            "eos": eos, "qlora_weight_delta": delta}
    (out / "export_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return tokenizer, eos


def _save_tokenizer(tokenizer_dir: Path, ref: models.BaseModelRef, out: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.save_pretrained(out)
    _declare_added_tokens(tokenizer, out / "tokenizer_config.json")
    for src_dir in (tokenizer_dir, Path(ref.location) if ref.local else None):
        for name in AUX_TOKENIZER_FILES:
            if src_dir is not None and (src_dir / name).is_file() and not (out / name).exists():
                shutil.copy2(src_dir / name, out / name)
    if ref.gguf_file and not (out / "tokenizer.model").exists():
        vocab.write_sentencepiece_model(Path(ref.location) / ref.gguf_file, out / "tokenizer.model")
    return tokenizer


def _declare_added_tokens(tokenizer: Any, config_path: Path) -> None:
    """Write `added_tokens_decoder` into tokenizer_config.json, as transformers 4 did and as the families' own
    configs have it. llama.cpp's converter reads an SPM vocabulary from `tokenizer.model` and takes which pieces
    are user-defined (matched whole, before the merges) only from there: without it Gemma 3's runs of spaces
    become ordinary pieces and llama.cpp splits `"\n  id"` as `▁` `▁id` where transformers has `▁▁` `id`, so
    every indented line of code would tokenize differently in the GGUF (transformers 5.23 writes the added
    tokens to tokenizer.json only)."""
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    if config.get("added_tokens_decoder"):
        return
    config["added_tokens_decoder"] = {
        str(i): {"content": t.content, "lstrip": t.lstrip, "normalized": t.normalized, "rstrip": t.rstrip,
                 "single_word": t.single_word, "special": t.special}
        for i, t in sorted(tokenizer.added_tokens_decoder.items())
    }
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _generation_eos(model: Any, tokenizer: Any, ref: models.BaseModelRef, out: Path) -> list[str]:
    from transformers import GenerationConfig

    try:
        gen = GenerationConfig.from_pretrained(ref.location) if ref.local and not ref.gguf_file else None
    except OSError:
        gen = None
    gen = gen or GenerationConfig.from_model_config(model.config)
    eos = stop_tokens(tokenizer)  # what every trained assistant turn ends in (trainer/data/render.py)
    ids = tokenizer.convert_tokens_to_ids(eos)
    old = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    gen.eos_token_id = list(dict.fromkeys([*ids, *(i for i in old if i is not None)]))
    gen.save_pretrained(out)
    return eos
