"""The spec's `tracking` and `output` sections: where metrics and results go.

Part of THE job spec (trainer/spec/job.py, where `JobSpec` holds them). Torch-free.
"""

from __future__ import annotations

from pydantic import Field

from trainer.spec.base import Section


class TrackingSpec(Section):
    mlflow_uri: str | None = Field(
        None,
        description="MLflow tracking server. Unset: a local `sqlite:///` store under the output folder.",
    )
    experiment: str | None = Field(None, description="MLflow experiment (unset: the job name).")
    flush_timeout: int = Field(
        300,
        ge=0,
        le=86_400,
        description="Seconds the end of a job waits for an unreachable MLflow server to take the metrics and artifacts "
        "buffered while it was down; metrics still unsent then are written to `<output>/mlflow-unsent.jsonl` (the "
        "artifacts are in the output folder).",
    )
    system_metrics: bool = Field(
        True,
        description="MLflow system metrics while the job trains, from rank 0's machine: CPU, memory, disk and network "
        "(`system/cpu_utilization_percentage`, `system/system_memory_usage_megabytes`, ...), and each GPU's "
        "utilisation and memory through NVML where there is one (`system/gpu_0_utilization_percentage`, ...).",
    )
    system_metrics_interval: float = Field(
        10.0,
        gt=0,
        le=3600,
        description="Seconds between two samples of `tracking.system_metrics`.",
    )


class OutputSpec(Section):
    uri: str | None = Field(
        None,
        description="Where adapter, tokenizer, resolved spec and the `_SUCCESS` marker go: a "
        "local folder or `s3://` prefix (unset: `runs/<name>` next to the spec).",
    )
