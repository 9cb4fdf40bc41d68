"""Spec -> the kubetune chart's values (the contract between `launch` and the chart)."""

from __future__ import annotations

from typing import Any

from trainer.spec.io import dump_spec
from trainer.spec.job import JobSpec
from trainer.spec.strategy import accelerate_config_yaml, process_env

DEFAULT_PORT = 29500


def chart_values(
    spec: JobSpec, job_name: str, port: int = DEFAULT_PORT, matrix_group: str = "", params: int | None = None
) -> dict[str, Any]:
    """Values for `helm template`; `spec` is the resolved spec exactly as the pods will read it, and
    `matrix_group` the label its matrix's jobs share (trainer.spec.matrix.group), if it is one of them.
    `params`: the base model's parameter count when known (sizes the export pod), else None.
    Requests only: the chart sets each pod's cpu, memory and ephemeral-storage limits equal to them."""
    res = spec.resources
    job: dict[str, Any] = {
        "name": job_name,
        "specName": spec.name,
        "nodes": res.nodes,
        "processesPerNode": res.processes_per_node,
        "port": port,
    }
    if matrix_group:
        job["matrixGroup"] = matrix_group
    return {
        "job": job,
        "spec": dump_spec(spec),
        "accelerateConfig": accelerate_config_yaml(spec),
        "gpu": {"type": res.gpu, "perNode": 0 if res.gpu == "none" else res.gpus_per_node},
        "resources": {"requests": res.requests()},
        "shmSize": res.shm_size,
        "env": process_env(spec),
        "export": {"enabled": False} if spec.export is None else {
            "enabled": True, "resources": {"requests": spec.export.requests(params, spec.model.dtype)}},
        "scheduling": {"queueName": res.queue or ""},
    }
