"""THE kubetune job spec: these modules (trainer/spec/) are the only place defaults live.

`JobSpec` is the top level; each section is a model of its own module, by what it holds:
`model.py` (model, adapter), `data.py` (data), `training.py` (training, eval), `resources.py` (resources),
`output.py` (tracking, output), `export.py` (export).

Imported by the launcher (which must stay light), so these modules import no torch and no
ML library. Field descriptions are the user documentation: `docs/spec.md` is generated
from them (`python -m trainer.spec.doc`).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from trainer.spec.base import DNS_LABEL, Section
from trainer.spec.data import DataSpec
from trainer.spec.export import ExportSpec, lora_gguf_problems
from trainer.spec.model import AdapterSpec, ModelSpec
from trainer.spec.output import OutputSpec, TrackingSpec
from trainer.spec.preference import PreferenceSpec, preference_problems
from trainer.spec.resources import ResourcesSpec
from trainer.spec.training import EvalSpec, TrainingSpec, gpu_option_problems

NAME_MAX = 40  # leaves room for the per-submission suffix and the pod index in a 63-char label


class JobSpec(Section):
    name: str = Field(
        ...,
        description=f"Job name: lowercase letters, digits and `-`, at most {NAME_MAX} characters "
        "(DNS-1123). Prefix of every Kubernetes object and of the MLflow run.",
    )
    base_model: str = Field(
        ...,
        description="Base model: a hub id (`Qwen/Qwen2.5-7B-Instruct`), an `s3://` prefix, a local "
        "folder, or a `.gguf` file (loaded and de-quantized).",
    )
    model: ModelSpec = Field(default_factory=ModelSpec, description="How the base model is loaded.")
    adapter: AdapterSpec = Field(default_factory=AdapterSpec, description="The adapter that is trained.")
    data: DataSpec = Field(..., description="Training and evaluation data.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation and distribution.")
    preference: PreferenceSpec = Field(
        default_factory=PreferenceSpec,
        description="Settings of the preference objectives (`training.objective: dpo | orpo | kto`).",
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Nodes and GPUs.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="Experiment tracking.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Where results are written.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Sample answers before and after training; task metrics.")
    export: ExportSpec | None = Field(
        None,
        description="Merge, GGUF, verify and register after training (unset: no export; `export: {}` for the defaults).",
    )
    matrix: dict[str, Any] | None = Field(
        None,
        description="One job per combination of values, e.g. `{dimension: [empathy, humor]}`: `${matrix.dimension}` "
        "in any string field (the name must use every key) is replaced by each job's value. Each job has its own "
        "name, MLflow run and registered model; `launch list` groups them. A submitted job's resolved spec holds "
        "its own values here.",
    )

    @field_validator("name")
    @classmethod
    def _dns_name(cls, v: str) -> str:
        if len(v) > NAME_MAX or not DNS_LABEL.match(v):
            raise ValueError(
                f"{v!r} is not a valid job name: use lowercase letters, digits and '-', start with a "
                f"letter, at most {NAME_MAX} characters (e.g. 'support-bot-v3')"
            )
        return v

    @field_validator("base_model")
    @classmethod
    def _base_model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a model: a hub id, an s3:// prefix, a local folder or a .gguf file")
        return v

    @model_validator(mode="after")
    def _gpu_options(self) -> JobSpec:
        problems = gpu_option_problems(self.training, self.model.attn_implementation, self.resources.gpu)
        problems += preference_problems(self)
        problems += lora_gguf_problems(self.adapter.target_parameters, self.export, self.adapter.method)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name
