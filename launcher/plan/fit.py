"""The GPU catalog (the boards each `resources.gpu` kind may land on) and whether an estimate fits them.

Capacities are what `nvidia-smi` reports as total memory for each board (MiB); the CUDA context
and allocator slack are part of the estimate, not subtracted here. `resources.gpu: a100` may land
on either A100 variant (the chart matches both by their product label), and `any` on any GPU node,
so the GPU that decides is the smallest the job can be scheduled on. `KINDS` is the one list of
GPU kinds: the spec's `resources.gpu` values, the chart's `gpu.type` enum and its placement
presets are checked against it (tests/unit/test_gpu_catalog.py).

`bf16_flops` is the dense (no sparsity) bf16 tensor-core peak of the board, FLOP/s, from NVIDIA's
datasheets: B200 (HGX) 2.25 PFLOP/s (4.5 with sparsity); H200 and H100 SXM 989 TFLOP/s (1979 with
sparsity; H100 PCIe is 756); A100 312; L40S 362 (733 with sparsity); A10G 70 (AWS's variant of the
A10, whose 125 it does not reach; the figure MosaicML's speed monitor uses, after
https://www.baseten.co/blog/nvidia-a10-vs-a10g-for-ml-model-inference/).
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.plan.arch import Architecture
from launcher.plan.memory import Estimate, estimate
from launcher.plan.setup import Setup

MiB = 1024**2


@dataclass(frozen=True)
class Gpu:
    key: str
    label: str
    capacity: int  # bytes
    bf16_flops: float  # dense bf16 tensor-core peak, FLOP/s


B200 = Gpu("b200-180gb", "B200 180GB", 183359 * MiB, 2.25e15)
H200 = Gpu("h200-141gb", "H200 141GB", 143771 * MiB, 989e12)
H100_80 = Gpu("h100-80gb", "H100 80GB", 81559 * MiB, 989e12)
A100_80 = Gpu("a100-80gb", "A100 80GB", 81920 * MiB, 312e12)
L40S = Gpu("l40s-48gb", "L40S 48GB", 46068 * MiB, 362e12)
A100_40 = Gpu("a100-40gb", "A100 40GB", 40960 * MiB, 312e12)
A10G = Gpu("a10g-24gb", "A10G 24GB", 23028 * MiB, 70e12)
GPUS = (B200, H200, H100_80, A100_80, L40S, A100_40, A10G)  # the fit table's columns, about largest first
# `resources.gpu` kind -> the boards it may be scheduled on (`none`, a CPU job, has none)
KINDS: dict[str, tuple[Gpu, ...]] = {
    "h100": (H100_80,), "h200": (H200,), "b200": (B200,), "a100": (A100_80, A100_40), "l40s": (L40S,),
    "a10g": (A10G,), "any": GPUS,
}
COUNTS = (1, 2, 4, 8)


def deciding_gpu(gpu_type: str) -> Gpu:
    """The smallest GPU `resources.gpu` may be scheduled on."""
    return min(KINDS[gpu_type], key=lambda g: g.capacity)


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
