"""Spec -> the kubetune chart's values (the contract between `launch` and the chart)."""

from __future__ import annotations

from typing import Any

from trainer.spec import JobSpec
from trainer.spec_io import dump_spec
from trainer.strategy import accelerate_config_yaml, process_env

DEFAULT_PORT = 29500


def chart_values(spec: JobSpec, job_name: str, port: int = DEFAULT_PORT, matrix_group: str = "") -> dict[str, Any]:
    """Values for `helm template`; `spec` is the resolved spec exactly as the pods will read it, and
    `matrix_group` the label its matrix's jobs share (trainer.matrix.group), if it is one of them."""
    res = spec.resources
    requests = {k: v for k, v in (("cpu", res.cpu), ("memory", res.memory)) if v}
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
        "resources": {"requests": requests} if requests else {},
        "shmSize": res.shm_size,
        "env": process_env(spec),
        "export": {"enabled": spec.export is not None},
        "scheduling": {"queueName": res.queue or ""},
    }
