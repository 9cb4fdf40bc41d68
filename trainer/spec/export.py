"""The `export` section of the job spec: merge, GGUF types, the verification gate, the registry.

Part of THE job spec (trainer/spec/job.py, where `JobSpec` holds it); split out to keep files small.
Torch-free: the launcher imports it.
"""

from __future__ import annotations

import re
import warnings
from typing import Literal

from pydantic import Field, field_validator, model_validator

from trainer.spec.base import GiB, Section, cpu_quantity, gibibytes, quantity


class GateSpec(Section):
    """Verification thresholds of one GGUF type (defaults: trainer/spec/quants.py)."""

    min_top1: float = Field(..., ge=0.0, le=1.0, description="Top-1 next-token agreement with the merged model, at least.")
    max_kl: float = Field(..., ge=0.0, description="Mean KL divergence (nats) from the merged model's next-token "
                          "distribution, at most.")


class VerifySpec(Section):
    """The gate every GGUF passes before it is registered."""

    golden_conversations: int = Field(
        8, ge=1, le=256,
        description="Held-out conversations (`data.eval`, else `data.train`) the GGUF is compared on: "
        "next-token distributions at every position, tokenization and the embedded chat template.",
    )
    thresholds: dict[str, GateSpec] = Field(
        default_factory=dict,
        description="Per GGUF type, e.g. `{q4_k_m: {min_top1: 0.9, max_kl: 0.1}}`; types not named keep their "
        "defaults (q8_0: top-1 >= 95%, KL <= 0.02; q4_k_m: top-1 >= 85%, KL <= 0.15).",
    )

    @field_validator("thresholds")
    @classmethod
    def _known_types(cls, v: dict[str, GateSpec]) -> dict[str, GateSpec]:
        from trainer.spec.quants import QUANTS, known

        unknown = [k for k in v if k not in QUANTS]
        if unknown:
            raise ValueError(f"unknown GGUF type(s) {', '.join(unknown)}; known: {known()}")
        return v

    def gate(self, quant: str) -> GateSpec:
        from trainer.spec.quants import QUANTS

        q = QUANTS[quant]
        return self.thresholds.get(quant) or GateSpec(min_top1=q.min_top1, max_kl=q.max_kl)


class RegisterSpec(Section):
    """Where verified results go in the MLflow model registry (the tracking server's)."""

    name: str | None = Field(None, description="Registered model name (unset: the job name). One registered model "
                             "holds the adapter, the merged model and every GGUF as versions.")
    alias: str | None = Field("candidate", description="Alias pointed at the newest verified GGUF version of the "
                              "first type in `export.gguf` (unset: no alias).")
    register_adapter: bool = Field(True, description="Register the adapter as a version too.")
    register_merged: bool = Field(False, description="Register the merged HF model (as large as the base model).")


class ImatrixSpec(Section):
    """An importance matrix for the quantizer: which weights matter, measured on your data."""

    conversations: int = Field(
        128, ge=1, le=100_000,
        description="Training conversations (`data.train`, rendered with the training chat template) the merged "
        "model runs over to measure its activations. Held-out data stays out of it: the gate uses that.",
    )
    file: str | None = Field(
        None,
        description="Use this importance matrix instead of computing one: a local path or `s3://` URI of a file "
        "made by llama.cpp's `llama-imatrix` (GGUF or legacy `.dat`).",
    )


# Default export requests (ExportSpec.requests), and the bytes per parameter of what it holds.
EXPORT_CPU = 8
EXPORT_MEMORY_GIB = 64
EXPORT_EPHEMERAL_GIB = 150
EXPORT_MIN_MEMORY_GIB = 16
EXPORT_HEADROOM_GIB = 8
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class ExportResourcesSpec(Section):
    """Requests of the export pod; the chart sets its limits to the same. Unset fields are sized from the base model
    when `launch` can tell its parameter count (a catalogued hub id, a local folder or the local Hugging Face cache;
    `launch plan` reads the same), else fixed defaults for a model of up to about 14B parameters."""

    cpu: str | None = Field(None, description=f"CPU request (and limit). Unset: {EXPORT_CPU} (the quantizer and "
                            "the verification use every core they get).")
    memory: str | None = Field(
        None,
        description="Memory request (and limit). Unset: two copies of the model in `model.dtype` (the merge, then "
        "the merged model next to the GGUF in verification); with `mode: adapters` one copy or the largest GGUF, "
        "whichever is larger (the base for the gate's references, then each GGUF alone in llama.cpp); plus "
        f"{EXPORT_HEADROOM_GIB}Gi, at least "
        f"{EXPORT_MIN_MEMORY_GIB}Gi; {EXPORT_MEMORY_GIB}Gi when the parameter count is unknown.",
    )
    ephemeral_storage: str | None = Field(
        None,
        description="Local disk (`ephemeral-storage` request and limit) for the base model's download, the merged "
        "model, the float GGUF and every quantized GGUF. Unset: their sizes from the parameter count plus "
        f"{EXPORT_HEADROOM_GIB}Gi; {EXPORT_EPHEMERAL_GIB}Gi when it is unknown. A model larger than a node's disk "
        "needs a node pool with larger local disks (`export.nodeSelector` in the chart).",
    )

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, v: object) -> str | None:
        return cpu_quantity(v, "`8` or `500m`")

    @field_validator("memory", "ephemeral_storage")
    @classmethod
    def _bytes(cls, v: str | None) -> str | None:
        return quantity(v, "`64Gi`")


EXPERT_PARAMETERS = ("mlp.experts.gate_up_proj", "mlp.experts.down_proj")


def lora_gguf_problems(target_parameters: list[str] | None, export: ExportSpec | None,
                       method: str = "lora") -> list[str]:
    """What a LoRA GGUF cannot carry. DoRA's magnitudes: llama.cpp has none. Fused expert tensors
    (`adapter.target_parameters`) other than gpt-oss's gate_up_proj / down_proj, whose per-expert LoRAs
    trainer/export/expert_lora.py writes. rsLoRA is carried (the converter is handed alpha * sqrt(r),
    trainer/export/gguf.py `lora_config`); both are proven by the adapter gate
    (tests/integration/test_adapter_gguf_rslora.py, test_adapter_gguf_gptoss.py)."""
    if export is None or (export.mode == "merged" and not export.adapter_gguf):
        return []
    field = "export.adapter_gguf" if export.mode == "merged" else f"export.mode: `{export.mode}`"
    if method == "dora":
        return [f"{field} writes the adapter as a LoRA GGUF, and llama.cpp's converter does not carry "
                "adapter.method: dora (its magnitudes): the file would apply another adapter than the one trained. "
                "Use `export.mode: merged` without adapter_gguf, or train plain LoRA"]
    others = [p for p in target_parameters or [] if not p.endswith(EXPERT_PARAMETERS)]
    if others:
        return [f"{field} writes the adapter as a LoRA GGUF, which kubetune makes of fused expert tensors only for "
                f"gpt-oss's {', '.join(EXPERT_PARAMETERS)}, not of adapter.target_parameters {others}: use "
                "`mode: merged` (the adapter merged into full GGUFs) without adapter_gguf"]
    return []


# `export.register` is the name users write (DESIGN.md); pydantic only notes that it shadows
# ABCMeta.register, which no spec instance uses.
warnings.filterwarnings("ignore", message='Field name "register" in "ExportSpec"', category=UserWarning)


class ExportSpec(Section):
    """After training: merge, GGUF, verify, register. Present in the spec = the export job runs."""

    gguf: list[str] = Field(
        default_factory=lambda: ["q4_k_m"],
        description="GGUF types to write and verify: `f32`, `f16`, `bf16` (converted) and `q8_0`, `q6_k`, "
        "`q5_k_m`, `q5_k_s`, `q5_0`, `q4_k_m`, `q4_k_s`, `q4_0`, `q3_k_m`, `q2_k` (quantized by llama.cpp).",
    )
    imatrix: ImatrixSpec | None = Field(
        None,
        description="Quantize with an importance matrix (`imatrix: {}` computes one from the training data; it is "
        "written to `export/imatrix.gguf`). Helps most at 4 bits and below. Unset: plain quantization.",
    )
    mode: Literal["merged", "adapters", "both"] = Field(
        "merged",
        description="What is exported. `merged`: the adapter merged into the base, one full GGUF per type. "
        "`adapters`: per type one shared base GGUF, converted from the un-merged base once and reused by every job "
        "naming the same base (content-addressed under `bases_uri`), and the job's adapter as a small LoRA GGUF "
        "gated on that base (llama.cpp `--lora`, Ollama `ADAPTER`). `both`: the two. See docs/export.md.",
    )
    bases_uri: str | None = Field(
        None,
        description="Where `mode: adapters|both` keeps the shared base GGUFs, one folder per content key, written "
        "once and reused: a local path (against the spec's folder) or `s3://` URI. Unset: `bases/` next to the job's "
        "output folder (the parent of `output.uri`), so a matrix's cells share one base.",
    )
    adapter_gguf: bool = Field(False, description="With `mode: merged`: also write the adapter alone as a LoRA GGUF "
                               "(`export/adapter.gguf`; not gated, not registered). `mode: adapters|both` write, "
                               "gate and register it anyway: leave this unset there.")
    verify: VerifySpec = Field(default_factory=VerifySpec, description="The verification gate.")
    register: RegisterSpec | None = Field(default_factory=RegisterSpec, description="MLflow model registry "
                                          "(`null`: register nothing).")
    ollama: bool = Field(True, description="Write an Ollama `Modelfile` (TEMPLATE, stop tokens, SYSTEM from "
                         "`data.system_prompt`, or a `data.template.system` without placeholders) next to each GGUF.")
    lmstudio_publisher: str | None = Field(None, description="Also lay the GGUFs out for LM Studio as "
                                           "`lmstudio/<publisher>/<name>/<file>.gguf`.")
    wait_minutes: int = Field(
        0, ge=0,
        description="How long the export job waits for training's `_SUCCESS` (0: as long as it takes, so an export "
        "whose training queues for days still runs; it logs a line every few minutes while it waits). Training's "
        "`_FAILED` ends the wait at once either way.",
    )
    resources: ExportResourcesSpec = Field(
        default_factory=ExportResourcesSpec,
        description="Requests of the export pod (limits equal to them; no GPU): it merges, converts and verifies on "
        "CPU.",
    )

    def requests(self, params: int | None, dtype: str) -> dict[str, str]:
        """Requests of the export pod: `resources`' own, else sized from the base model's parameter count (None:
        unknown) in `dtype` (model.dtype), as ExportResourcesSpec's field descriptions state."""
        from trainer.spec.quants import QUANTS

        res, weights = self.resources, DTYPE_BYTES[dtype]
        memory, disk = f"{EXPORT_MEMORY_GIB}Gi", f"{EXPORT_EPHEMERAL_GIB}Gi"
        if params:
            held = 2 * weights  # merged (and both): the merge, then the merged model beside each GGUF
            if self.mode == "adapters":  # the base for the gate's references, freed before llama.cpp loads a GGUF
                held = max(weights, *(QUANTS[q].bits / 8 for q in self.gguf))
            memory = gibibytes(max(held * params + EXPORT_HEADROOM_GIB * GiB, EXPORT_MIN_MEMORY_GIB * GiB))
            # the download and the merged model in the dtype, the float GGUF (f16/bf16), each type asked for
            per_param = 2 * weights + 2 + sum(QUANTS[q].bits / 8 for q in self.gguf if QUANTS[q].step == "quantize")
            per_param += sum(QUANTS[q].bits / 8 for q in self.gguf if q == "f32")
            disk = gibibytes(per_param * params + EXPORT_HEADROOM_GIB * GiB)
        return {"cpu": res.cpu or str(EXPORT_CPU), "memory": res.memory or memory,
                "ephemeral-storage": res.ephemeral_storage or disk}

    @field_validator("gguf")
    @classmethod
    def _known_gguf(cls, v: list[str]) -> list[str]:
        from trainer.spec.quants import QUANTS, known

        unknown = [q for q in v if q not in QUANTS]
        if unknown:
            raise ValueError(f"unknown GGUF type(s) {', '.join(unknown)}; known: {known()}")
        if len(set(v)) != len(v):
            raise ValueError("lists a GGUF type twice")
        return v

    @model_validator(mode="after")
    def _adapter_mode(self) -> ExportSpec:
        if self.mode != "merged" and self.adapter_gguf:
            raise ValueError(f"adapter_gguf: mode {self.mode} writes, gates and registers the adapter GGUF itself; "
                             "remove `export.adapter_gguf` (it only adds an unverified adapter GGUF to `mode: merged`)")
        if self.mode == "adapters" and self.imatrix is not None:
            raise ValueError("imatrix: with mode adapters only the shared base is quantized, and it is shared by every "
                             "job naming the base, so one job's data does not weigh it: remove `export.imatrix`, or "
                             "use `mode: both` (the importance matrix then weighs the merged GGUFs)")
        if self.mode == "adapters" and self.register is not None and self.register.register_merged:
            raise ValueError("register.register_merged: mode adapters merges nothing: use `mode: both`, or drop it")
        return self

    @field_validator("lmstudio_publisher")
    @classmethod
    def _publisher(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", v):
            raise ValueError(f"{v!r} is not a folder name: use letters, digits, '.', '_' and '-'")
        return v
