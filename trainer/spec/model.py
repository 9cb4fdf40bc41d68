"""The spec's `model` and `adapter` sections: how the base model is loaded and the adapter that is trained.

Part of THE job spec (trainer/spec/job.py, where `JobSpec` holds them). Torch-free.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from trainer.spec.base import Section


class ModelSpec(Section):
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16",
        description="Compute dtype of the base weights. On CPU, float32 is fastest; bfloat16 "
        "works but runs slowly on most CPUs.",
    )
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "none",
        description="Load the base model quantized with bitsandbytes (QLoRA). `4bit` uses NF4 "
        "with double quantization.",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa",
        description="Attention kernel. `flash_attention_2` needs a CUDA GPU and the flash-attn "
        "package, which the trainer image does not have: `launch validate` refuses it for GPU jobs until a "
        "strategy contract run covers it. Packing keeps samples apart with every choice.",
    )
    trust_remote_code: bool = Field(
        False,
        description="Allow the base model's repository to run its own Python code. Off unless "
        "you trust that repository.",
    )
    chat_template: str | None = Field(
        None,
        description="A Jinja chat template file (local path or `s3://` URI) used instead of the "
        "tokenizer's own. Needed when the base model ships none, as base (non-instruct) models and "
        "many GGUF files do. It is saved with the tokenizer, so the adapter and exports carry it.",
    )


class AdapterSpec(Section):
    method: Literal["lora", "dora"] = Field("lora", description="`lora`, or `dora` (weight-decomposed LoRA).")
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scaling = alpha / r, or alpha / sqrt(r) with rslora).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    rslora: bool = Field(False, description="Rank-stabilised LoRA scaling (alpha / sqrt(r)).")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear",
        description="Modules that get adapters: `all-linear` (every linear layer except the "
        "output head) or a list of module names such as `[q_proj, v_proj]`.",
    )
    target_parameters: list[str] | None = Field(
        None,
        description="Parameters (not modules) that also get LoRA adapters, for weights that are no linear layer: "
        "the fused 3-D expert tensors of mixture-of-experts models. On gpt-oss `all-linear` adapts only attention; "
        "its experts: `[mlp.experts.gate_up_proj, mlp.experts.down_proj]`. A name matches a parameter whose full name "
        "is it or ends in `.` + it; each expert gets its own rank-`r` pair. PEFT's parameter adapters support "
        "plain LoRA only: they need `method: lora`, `dropout: 0` and `init: default`. On Qwen3-MoE (and the other "
        "MoE models whose experts transformers 5 fuses, such as Mixtral and DeepSeek-V3) PEFT maps `all-linear` to "
        "the experts and the router as parameter adapters by itself: they need the same settings.",
    )
    init: Literal["default", "pissa", "loftq"] = Field(
        "default", description="Adapter initialisation: `default` (B = 0), `pissa` or `loftq`."
    )
    init_from: str | None = Field(
        None,
        description="Start from a trained adapter instead of a new one: a local folder, an `s3://` prefix (a job's "
        "`output.uri` or its `adapter/` folder) or `models:/NAME@ALIAS` / `models:/NAME/VERSION` (an adapter version "
        "of the MLflow registry). Its LoRA settings must equal this section's. The usual chain: an SFT job's output "
        "starts a DPO job (docs/preference.md); the parent is recorded in the run's and the export's lineage tags.",
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("must name at least one module, or be `all-linear`")
        return v

    @field_validator("target_parameters")
    @classmethod
    def _parameter_names(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or not all(name.strip() for name in v)):
            raise ValueError("must name at least one parameter, e.g. `[mlp.experts.gate_up_proj]`, or be left out")
        return v

    @model_validator(mode="after")
    def _init_from_keeps_its_weights(self) -> AdapterSpec:
        if self.init_from is not None and not self.init_from.strip():
            raise ValueError("init_from: empty: give a folder, an `s3://` prefix or `models:/NAME@ALIAS`, or leave it out")
        if self.init_from is not None and self.init != "default":
            raise ValueError(
                f"init_from: the adapter starts from the trained weights of {self.init_from}, which `init: {self.init}` "
                "would replace: set `adapter.init: default`, or leave out init_from")
        return self

    @model_validator(mode="after")
    def _parameter_adapters_are_plain_lora(self) -> AdapterSpec:
        if not self.target_parameters:
            return self
        problems = [f"`{field}: {value}`" for field, value, ok in (
            ("method", self.method, self.method == "lora"),
            ("dropout", self.dropout, self.dropout == 0),
            ("init", self.init, self.init == "default")) if not ok]
        if problems:
            raise ValueError(
                f"target_parameters: PEFT's parameter adapters support plain LoRA only, not {', '.join(problems)}: "
                "set `adapter.method: lora`, `adapter.dropout: 0` and `adapter.init: default`, or leave out "
                "target_parameters")
        return self
