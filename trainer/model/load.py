"""The base model, its tokenizer and the adapter that is trained on it.

`base_model` is a local HF folder, an `s3://` prefix (copied to a local cache first), a hub id,
or a `.gguf` file (local or s3) that transformers loads and de-quantizes. `model.quantization`
loads the base through bitsandbytes (QLoRA); `adapter` becomes a PEFT `LoraConfig`. What the
checkpoint's own config.json changes (MXFP4 and pre-quantized bitsandbytes checkpoints, gpt-oss's
attention and experts) is decided in `trainer.model.arch`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from transformers import (
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    GgufConfig,
    Mxfp4Config,
    PreTrainedModel,
)

from trainer import ranks, storage
from trainer import say as out
from trainer.model import arch as model_config
from trainer.model import bnb_adapter, hf_adapter, init_from, kernels
from trainer.model.errors import ModelError
from trainer.model.tokenizer import open_tokenizer, read_chat_template
from trainer.spec.job import JobSpec

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
PISSA_INIT = "pissa_niter_16"  # fast-SVD PiSSA: near-identical to the exact SVD, minutes faster on 7B+ models


@dataclass(frozen=True)
class BaseModelRef:
    """Where `from_pretrained` reads from: a local folder (or hub id) and, for GGUF, the file in it."""

    location: str
    gguf_file: str | None = None
    local: bool = True

    def describe(self) -> str:
        where = str(Path(self.location) / self.gguf_file) if self.gguf_file else self.location
        return where if self.local else f"{where} (hub)"


def cache_root() -> Path:
    """Local copies of s3:// models: `$KUBETUNE_CACHE_DIR` or `~/.cache/kubetune`."""
    return Path(os.environ.get("KUBETUNE_CACHE_DIR") or Path.home() / ".cache" / "kubetune") / "models"


def check_hardware(spec: JobSpec) -> None:
    """Fail before anything heavy when the spec asks for hardware this machine does not have."""
    cuda = torch.cuda.is_available()
    if spec.resources.gpu != "none" and not cuda:
        raise ModelError(
            f"resources.gpu is {spec.resources.gpu!r} but this machine has no CUDA GPU: "
            "set `resources.gpu: none` for a CPU run (e.g. `--set resources.gpu=none`)"
        )
    kernels.preflight(spec, cuda=cuda)  # the GPU options' packages (trainer/model/kernels.py)
    if spec.model.attn_implementation == "flash_attention_2" and not cuda:
        raise ModelError("model.attn_implementation flash_attention_2 needs a CUDA GPU: use `sdpa` on this machine")
    if spec.model.quantization != "none" and spec.base_model.lower().endswith(".gguf"):
        raise ModelError(
            "a .gguf base model is de-quantized on load and cannot be re-quantized with bitsandbytes: "
            "set `model.quantization: none`, or point base_model at the HF folder for QLoRA"
        )
    if spec.adapter.init == "loftq" and (spec.model.quantization != "4bit" or not cuda):
        raise ModelError(
            "adapter.init loftq initialises the adapter against the 4-bit quantization error and peft runs it "
            "on CUDA only: it needs `model.quantization: 4bit` and a GPU; use `adapter.init: default` otherwise"
        )
    if spec.adapter.init == "pissa" and (spec.model.quantization != "none" or spec.training.strategy in ("zero3", "fsdp")):
        raise ModelError(
            "adapter.init pissa rewrites the base weights from their SVD, which needs unquantized, unsharded "
            "weights: use `model.quantization: none` with strategy ddp or zero2, or `adapter.init: default`"
        )


def resolve_base_model(base_model: str, base_dir: Path | None = None) -> BaseModelRef:
    """Turn `base_model` into something `from_pretrained` reads, fetching s3:// to the local cache.

    A relative local path is taken against `base_dir` (the spec's folder)."""
    is_gguf = base_model.lower().endswith(".gguf")
    if storage.is_remote(base_model):
        local = storage.fetch(base_model, cache_root())
        return BaseModelRef(str(local.parent), local.name) if is_gguf else BaseModelRef(str(local))
    path = Path(base_model.removeprefix("file://")).expanduser()
    if not path.is_absolute() and base_dir is not None and (base_dir / path).exists():
        path = base_dir / path
    if path.exists():
        if is_gguf:
            return BaseModelRef(str(path.parent), path.name)
        if not (path / "config.json").exists():
            raise ModelError(f"base_model {base_model}: folder has no config.json; expected a saved HF model folder")
        return BaseModelRef(str(path))
    if is_gguf or base_model.startswith(("/", ".", "~")) or base_model.count("/") != 1:
        raise ModelError(f"base_model {base_model}: not found; give an existing folder, .gguf file, s3:// URI or hub id")
    return BaseModelRef(base_model, local=False)


def load_tokenizer(ref: BaseModelRef, spec: JobSpec, base_dir: Path | None = None):
    """The base model's tokenizer (trainer/model/tokenizer.py); `model.chat_template` (a Jinja file) replaces its
    own template."""
    template = read_chat_template(spec.model.chat_template, base_dir) if spec.model.chat_template else None
    return open_tokenizer(ref.location, gguf_file=ref.gguf_file, trust_remote_code=spec.model.trust_remote_code,
                          chat_template=template)


def say(message: str) -> None:
    """One log line, from rank 0 only (as trainer.train's)."""
    out.say(message, main_only=True)


def load_plan(ref: BaseModelRef, spec: JobSpec) -> model_config.LoadPlan:
    """How `ref` is loaded for `spec` (quantization, attention), from the checkpoint's config.json."""
    config = {} if ref.gguf_file else model_config.read_config(ref.location, ref.local)
    return model_config.load_plan(config, spec.model.quantization, spec.model.attn_implementation,
                                  spec.adapter.target_parameters)


def load_base_model(ref: BaseModelRef, spec: JobSpec) -> PreTrainedModel:
    """The base model in the spec's dtype: quantized by bitsandbytes (or as the checkpoint was saved by it),
    de-quantized from GGUF or MXFP4."""
    dtype = DTYPES[spec.model.dtype]
    plan = load_plan(ref, spec)
    for note in plan.notes:
        say(note)
    kwargs: dict = {
        "dtype": dtype,
        "attn_implementation": plan.attn_implementation,
        "trust_remote_code": spec.model.trust_remote_code,
    }
    if ref.gguf_file:
        kwargs["gguf_file"] = ref.gguf_file
        kwargs["quantization_config"] = GgufConfig(dequantize=True)  # a dense model we can train and save
    elif plan.quantize == "mxfp4-dequantize":
        kwargs["quantization_config"] = Mxfp4Config(dequantize=True)  # dense experts in `dtype`: LoRA + merge
    elif plan.quantize == "bnb":
        kwargs["quantization_config"] = _bnb_config(spec)
    if plan.quantize in ("bnb", "checkpoint") and torch.cuda.is_available():
        kwargs["device_map"] = {"": ranks.local_rank()}  # each rank its own GPU
    model = AutoModelForCausalLM.from_pretrained(ref.location, **kwargs)
    if ref.gguf_file:
        _drop_quantizer_state(model)
    if note := kernels.apply_kernels(model, spec.training.kernels):  # before the adapter wraps the MLPs' layers
        say(note)
    return model


def _bnb_config(spec: JobSpec) -> BitsAndBytesConfig:
    dtype = DTYPES[spec.model.dtype]
    if spec.model.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        # FSDP / ZeRO-3 shard the packed weights, which they can only do when they share the float dtype.
        bnb_4bit_quant_storage=dtype if spec.training.strategy in ("fsdp", "zero3") else torch.uint8,
    )


def _drop_quantizer_state(model: PreTrainedModel) -> None:
    """After a GGUF load the weights are dense: nothing may still call the model quantized.

    Measured on transformers 5.23: a plain `gguf_file=` load of llama / gemma3 (its legacy GGUF
    path) gives dense `nn.Linear` weights yet keeps a `GgufHfQuantizer` (`is_trainable` False),
    `config.quantization_config`, `is_quantized` and `config._is_quantized` — Trainer then refuses
    to train. With `GgufConfig(dequantize=True)`, as we load, transformers removes all of them
    itself; this keeps it so if that changes (tests/unit/test_model.py checks the result).
    """
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    hf_adapter.clear_quantized_flags(model)


def lora_config(spec: JobSpec) -> LoraConfig:
    a = spec.adapter
    init: bool | str = {"default": True, "pissa": PISSA_INIT, "loftq": True}[a.init]  # loftq: see add_adapter
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=a.r,
        lora_alpha=a.alpha,
        lora_dropout=a.dropout,
        use_rslora=a.rslora,
        use_dora=a.method == "dora",
        target_modules=a.target_modules,
        target_parameters=a.target_parameters,
        init_lora_weights=init,
    )


def add_adapter(model: PreTrainedModel, spec: JobSpec, ref: BaseModelRef,
                parent: init_from.Parent | None = None) -> PeftModel:
    """Wrap the base in a trainable adapter (QLoRA preparation and checkpointing included); with
    `adapter.init_from`, it starts as `parent` (trainer/model/init_from.py: resolved by the caller, the node's first
    rank first; resolved here, against the working folder, when not given)."""
    quantized = spec.model.quantization != "none"
    checkpointing = spec.training.gradient_checkpointing
    if quantized:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=checkpointing, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        bnb_adapter.keep_4bit_weights_trainable(model)
    elif checkpointing:  # every strategy, fsdp too: accelerate's FSDP checkpoint wrapper empties the adapter (strategy.py)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if checkpointing:
        model.enable_input_require_grads()
        model.config.use_cache = False
    _check_target_parameters(model, spec.adapter.target_parameters or [])
    config = lora_config(spec)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as e:
        if str(e).startswith("lora.ParamWrapper"):
            raise _parameter_adapter_error(model, spec, config, str(e)) from None
        if "not found in the base model" not in str(e) and "Target module" not in str(e):
            raise
        names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise ModelError(
            f"adapter.target_modules {spec.adapter.target_modules} do not match this model; its linear layers are "
            f"{names} (or use `all-linear`)"
        ) from None
    if spec.adapter.init == "loftq":
        from peft import replace_lora_weights_loftq

        if not ref.local:
            raise ModelError("adapter.init loftq reads the unquantized safetensors: use a local or s3:// base_model")
        replace_lora_weights_loftq(peft_model, model_path=ref.location)
    if spec.adapter.init_from is not None:
        init_from.load_into(peft_model, parent or init_from.resolve(spec))  # type: ignore[arg-type]
    peft_model.train()  # see bnb_adapter.keep_4bit_weights_trainable: no quantized forward in eval mode first
    if spec.training.compile:  # after the adapter, so the LoRA layers are inside the compiled graphs
        say(f"training.compile: torch.compile of {kernels.compile_model(peft_model)} decoder layers (the first steps "
            "compile)")
    return peft_model


def _parameter_adapter_error(model: torch.nn.Module, spec: JobSpec, config: LoraConfig, refusal: str) -> ModelError:
    """PEFT refused a parameter adapter (its ParamWrapper: plain LoRA only) on parameters the spec did not name in
    `adapter.target_parameters`: on mixture-of-experts models whose experts transformers 5 fuses into 3-D tensors
    (Qwen3-MoE, Mixtral, DeepSeek-V3 ...), PEFT maps `all-linear` to those tensors and the router, as their
    `nn.Linear`s were adapted before; `config` holds what it mapped them to."""
    named = set(spec.adapter.target_parameters or [])
    added = sorted(set(config.target_parameters or []) - named)
    what = (f"PEFT adapts this {getattr(model.config, 'model_type', 'model')}'s fused expert tensors and router as "
            f"parameters ({', '.join(added)}), which `adapter.target_modules: {spec.adapter.target_modules}` "
            "reaches" if added else "adapter.target_parameters names parameter adapters")
    return ModelError(
        f"{what}; PEFT's parameter adapters support plain LoRA only ({refusal.removeprefix('lora.ParamWrapper ')}): set "
        "`adapter.dropout: 0` (and `method: lora`, `init: default`), or list target_modules that leave the experts "
        "out, such as the attention's `[q_proj, k_proj, v_proj, o_proj]`")


def _check_target_parameters(model: torch.nn.Module, targets: list[str]) -> None:
    """Every `adapter.target_parameters` entry must match a parameter as PEFT matches them (the full name, or a
    suffix after a `.`); PEFT itself only warns when one matches nothing."""
    names = [n for n, _ in model.named_parameters()]
    unmatched = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        fused = sorted({n.split(".", 3)[-1] for n, p in model.named_parameters() if p.dim() == 3})
        raise ModelError(
            f"adapter.target_parameters {unmatched} match no parameter of this model; its 3-D (fused expert) "
            f"parameters are {fused or 'none'} (name them as they end, e.g. `mlp.experts.down_proj`)"
        )


def trainable_summary(model: PeftModel) -> str:
    trainable, total = model.get_nb_trainable_parameters()
    return f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)"


def save_initial_adapter(model: PeftModel, out_dir: Path) -> None:
    """PiSSA: keep the adapter as initialised, to convert the trained one into a plain LoRA later."""
    model.peft_config["default"].init_lora_weights = True  # reloading it must not run the SVD again
    model.save_pretrained(str(out_dir))
    model.peft_config["default"].init_lora_weights = PISSA_INIT


def save_converted_adapter(model: PeftModel, out_dir: Path, initial_dir: Path) -> None:
    """A PiSSA adapter rewritten as a plain LoRA (rank 2r) that applies to the original base weights."""
    model.save_pretrained(str(out_dir), path_initial_model_for_weight_conversion=str(initial_dir))
