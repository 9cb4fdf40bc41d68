"""GPU types and whether an estimate fits them, per GPU count.

Capacities are what `nvidia-smi` reports as total memory for each board (MiB); the CUDA context
and allocator slack are part of the estimate, not subtracted here. `resources.gpu: a100` may land
on either A100 variant (the chart matches both by `nvidia.com/gpu.product`), and `any` on any of
them, so the GPU that decides is the smallest the job can be scheduled on.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.plan.arch import Architecture
from launcher.plan.memory import Estimate, Setup, estimate

MiB = 1024**2


@dataclass(frozen=True)
class Gpu:
    key: str
    label: str
    capacity: int  # bytes


H100_80 = Gpu("h100-80gb", "H100 80GB", 81559 * MiB)
A100_80 = Gpu("a100-80gb", "A100 80GB", 81920 * MiB)
A100_40 = Gpu("a100-40gb", "A100 40GB", 40960 * MiB)
GPUS = (H100_80, A100_80, A100_40)
CANDIDATES = {"h100": (H100_80,), "a100": (A100_80, A100_40), "any": GPUS}
COUNTS = (1, 2, 4, 8)


def deciding_gpu(gpu_type: str) -> Gpu:
    """The smallest GPU `resources.gpu` may be scheduled on."""
    return min(CANDIDATES[gpu_type], key=lambda g: g.capacity)


@dataclass(frozen=True)
class Row:
    gpus: int
    estimate: Estimate
    spec_layout: bool  # the spec's own nodes x gpus_per_node

    def headroom(self, gpu: Gpu) -> int:
        return gpu.capacity - self.estimate.total


def table(arch: Architecture, setup: Setup) -> list[Row]:
    """The estimate at 1, 2, 4 and 8 GPUs and at the spec's own GPU count, same strategy."""
    counts = sorted({*COUNTS, setup.world_size})
    return [Row(n, estimate(arch, setup.with_(world_size=n)), n == setup.world_size) for n in counts]
