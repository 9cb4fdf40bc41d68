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
        description="Seconds the end of a job waits for an unreachable MLflow server to take the metrics buffered "
        "while it was down; what is still unsent then is written to `<output>/mlflow-unsent.jsonl`.",
    )


class OutputSpec(Section):
    uri: str | None = Field(
        None,
        description="Where adapter, tokenizer, resolved spec and the `_SUCCESS` marker go: a "
        "local folder or `s3://` prefix (unset: `runs/<name>` next to the spec).",
    )
