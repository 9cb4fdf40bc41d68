"""The spec's `resources` section: nodes, GPUs, pod requests, restarts, the deadline and the queue.

Part of THE job spec (trainer/spec/job.py, where `JobSpec` holds it). Torch-free.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from trainer.spec.base import (
    DNS_LABEL,
    GiB,
    Section,
    cpu_quantity,
    duration_seconds,
    gibibytes,
    quantity,
    quantity_value,
)

# Default requests of a training pod (resources.requests()): sized to fit the 8-GPU nodes of the clouds
# (96 vCPUs and 680 GB or more on A100 and H100 instance types, less the node's own reservations).
CPU_PER_GPU = 8
MEMORY_PER_GPU_GIB = 48
GPU_EPHEMERAL_GIB = 200
CPU_JOB_CPU = 4
CPU_JOB_MEMORY_GIB = 8
CPU_JOB_EPHEMERAL_GIB = 20
# `resources.deadline: auto` (launcher/plan/deadline.py): this many times the estimated run at this fraction of
# the GPUs' bf16 peak (LoRA runs on 8 GPUs reach 25-45%; a slow data source or small model less), plus the hours
# a start may take (pulling the image, downloading the base model, the rendezvous waiting for every node)
DEADLINE_FACTOR = 3
DEADLINE_MFU = 0.10
DEADLINE_STARTUP_HOURS = 2


class ResourcesSpec(Section):
    gpu: Literal["h100", "h200", "b200", "a100", "l40s", "a10g", "any", "none"] = Field(
        "h100",
        description="GPU type per node (`any`: any node with `nvidia.com/gpu`), or `none` for a CPU-only job "
        "(laptops, tests). The kinds are `launch plan`'s GPU catalog (launcher/plan/fit.py).",
    )
    gpus_per_node: int = Field(8, ge=1, le=16, description="GPUs per node (one process each). Ignored when `gpu: none`.")
    nodes: int = Field(1, ge=1, le=512, description="Nodes (pods) of the job.")
    cpu: str | None = Field(
        None,
        description=f"CPU request per pod, e.g. `32`; the chart sets the limit to the same (Guaranteed QoS: a quota "
        f"on `limits.cpu` admits the pod, the static CPU manager gives it whole cores). Unset: {CPU_PER_GPU} per GPU, "
        f"{CPU_JOB_CPU} for a CPU job.",
    )
    memory: str | None = Field(
        None,
        description=f"Memory request per pod, e.g. `400Gi`, and its limit (a pod over it is OOM-killed). It must "
        f"hold `shm_size` too: `/dev/shm` is memory and counts against the limit. Unset: {MEMORY_PER_GPU_GIB}Gi per "
        f"GPU (loading the model's shards, data workers) plus `shm_size`; {CPU_JOB_MEMORY_GIB}Gi plus `shm_size` for "
        "a CPU job.",
    )
    ephemeral_storage: str | None = Field(
        None,
        description="Local disk per pod (`ephemeral-storage` request and limit): the base model's download in "
        "`/cache`, checkpoints staged in `/tmp` before they are uploaded. A pod over it is evicted. Unset: "
        f"{GPU_EPHEMERAL_GIB}Gi for a GPU job, {CPU_JOB_EPHEMERAL_GIB}Gi for a CPU job.",
    )
    shm_size: str = Field("16Gi", description="Size of the memory-backed `/dev/shm` per pod (part of `memory`).")
    max_restarts: int = Field(
        10,
        ge=0,
        le=1000,
        description="Restarts a job may have (preemptions, evictions, node drains, retried failures; each start "
        "after the first counts, recorded in `<output>/checkpoints/restarts.json`); one more fails the job with exit "
        "2. Raise it to resume such a job: `launch submit SPEC --resume NAME --set resources.max_restarts=N`.",
    )
    deadline: str = Field(
        "auto",
        description="How long the training Job may run before Kubernetes stops its pods and fails it "
        "(`activeDeadlineSeconds`, reason DeadlineExceeded), so a job that hangs or keeps failing cannot hold its "
        f"GPUs forever. `auto`: {DEADLINE_FACTOR} times `launch`'s estimate of the run at {DEADLINE_MFU:.0%} of the "
        f"GPUs' bf16 peak, plus {DEADLINE_STARTUP_HOURS} h to start, in whole hours; it needs `training.max_steps` "
        "and a base model whose size `launch` knows, else the job has no deadline and `launch submit` says so (a CPU "
        "job: none, silently). "
        "`none`: no deadline. Or a duration: `36h`, `2d`, `1h30m`. It counts from the Job's start, time Pending "
        "included (Kueue starts it at admission); a resumed job starts it anew.",
    )
    queue: str | None = Field(
        None,
        description="Kueue LocalQueue the job is submitted to (the `kueue.x-k8s.io/queue-name` label); unset: "
        "no queue, the job starts when the scheduler places its pods.",
    )

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline(cls, v: object) -> str:
        if isinstance(v, str) and v.strip() in ("auto", "none"):
            return v.strip()
        try:
            duration_seconds(v, "resources.deadline")
        except ValueError as e:
            raise ValueError(f"{e}; or `auto` (from the run's estimate), or `none`") from None
        return f"{v}".strip()

    @property
    def deadline_seconds(self) -> int | None:
        """The deadline the spec states; None for `auto` (the launcher's estimate) and `none`."""
        return None if self.deadline in ("auto", "none") else duration_seconds(self.deadline, "resources.deadline")

    @field_validator("queue")
    @classmethod
    def _queue_name(cls, v: str | None) -> str | None:
        if v is not None and not DNS_LABEL.match(v):
            raise ValueError(f"{v!r} is not a queue name: lowercase letters, digits and '-' (a LocalQueue's name)")
        return v

    @property
    def processes_per_node(self) -> int:
        return 1 if self.gpu == "none" else self.gpus_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, v: object) -> str | None:
        return cpu_quantity(v, "`32` or `500m`")

    @field_validator("memory", "ephemeral_storage", "shm_size")
    @classmethod
    def _bytes(cls, v: str | None) -> str | None:
        return quantity(v, "`400Gi`")

    @model_validator(mode="after")
    def _memory_holds_shm(self) -> ResourcesSpec:
        if self.memory and quantity_value(self.memory) <= quantity_value(self.shm_size):
            raise ValueError(f"resources.memory ({self.memory}) is not more than resources.shm_size "
                             f"({self.shm_size}): /dev/shm is memory and counts against the pod's memory limit; "
                             "raise resources.memory or lower resources.shm_size")
        return self

    def requests(self) -> dict[str, str]:
        """Requests of each training pod (the chart sets limits equal to them): the spec's, else the defaults
        its field descriptions state."""
        gpus = 0 if self.gpu == "none" else self.gpus_per_node
        cpu = str(CPU_PER_GPU * gpus) if gpus else str(CPU_JOB_CPU)
        memory = (MEMORY_PER_GPU_GIB * gpus if gpus else CPU_JOB_MEMORY_GIB) * GiB + quantity_value(self.shm_size)
        disk = GPU_EPHEMERAL_GIB if gpus else CPU_JOB_EPHEMERAL_GIB
        return {"cpu": self.cpu or cpu, "memory": self.memory or gibibytes(memory),
                "ephemeral-storage": self.ephemeral_storage or f"{disk}Gi"}
