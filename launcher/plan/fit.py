"""Whether an estimate fits the GPU catalog's boards (the catalog itself: trainer/spec/gpus.py, shared with the
trainer's MFU), at 1, 2, 4 and 8 GPUs and at the spec's own count.

The names below are the catalog's, re-exported: `Gpu`, the boards, `GPUS` (the fit table's columns), `KINDS` (the
boards each `resources.gpu` kind may land on) and `deciding_gpu`.
"""

from __future__ import annotations

from dataclasses import dataclass

from launcher.plan.arch import Architecture
from launcher.plan.memory import Estimate, estimate
from launcher.plan.setup import Setup
from trainer.spec.gpus import A10G, A100_40, A100_80, B200, GPUS, H100_80, H200, KINDS, L40S, Gpu, MiB, deciding_gpu

__all__ = ["A10G", "A100_40", "A100_80", "B200", "COUNTS", "GPUS", "H100_80", "H200", "KINDS", "L40S", "MiB", "Gpu",
           "Row", "deciding_gpu", "table"]
COUNTS = (1, 2, 4, 8)


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
