"""The GPU catalog: the boards each `resources.gpu` kind may land on, their memory and their peak FLOP/s.

One table for both sides: `launch plan` (launcher/plan/fit.py) checks memory against `capacity` and estimates
deadlines from `bf16_flops` (launcher/plan/deadline.py); the trainer divides its achieved FLOP/s by the peak of
the board it runs on for MFU (trainer/tracking/speed.py), found from `torch.cuda.get_device_name` by `board()`.
Torch-free.

Capacities are what `nvidia-smi` reports as total memory for each board (MiB); the CUDA context and allocator
slack are part of the estimate, not subtracted here. `resources.gpu: a100` may land on either A100 variant (the
chart matches both by their product label), and `any` on any GPU node, so the GPU that decides is the smallest the
job can be scheduled on. `KINDS` is the one list of GPU kinds: the spec's `resources.gpu` values, the chart's
`gpu.type` enum and its placement presets are checked against it (tests/unit/test_gpu_catalog.py).

`bf16_flops` is the dense (no sparsity) bf16 tensor-core peak of the board, FLOP/s, from NVIDIA's datasheets
(fp16 is the same): B200 (HGX) 2.25 PFLOP/s (4.5 with sparsity); H200 and H100 SXM 989 TFLOP/s (1979 with
sparsity; H100 PCIe is 756); A100 312; L40S 362 (733 with sparsity); A10G 70 (AWS's variant of the A10, whose 125
it does not reach; the figure MosaicML's speed monitor uses, after
https://www.baseten.co/blog/nvidia-a10-vs-a10g-for-ml-model-inference/). `fp32_flops` is the non-tensor float32
peak where the datasheet states one (H100 SXM and H200 67 TFLOP/s, H100 PCIe 51, A100 19.5, L40S 91.6, A10G
31.2); None where we have no datasheet figure (B200), and then a float32 run reports no MFU.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024**2


@dataclass(frozen=True)
class Gpu:
    key: str
    label: str
    capacity: int  # bytes
    bf16_flops: float  # dense bf16 (and fp16) tensor-core peak, FLOP/s
    fp32_flops: float | None = None  # non-tensor float32 peak, FLOP/s; None: not known

    def peak(self, dtype: str) -> float | None:
        """The peak FLOP/s for matmuls in `dtype` (`bfloat16`, `float16`, `float32`); None when not known."""
        if dtype in ("bfloat16", "float16"):
            return self.bf16_flops
        return self.fp32_flops if dtype == "float32" else None


B200 = Gpu("b200-180gb", "B200 180GB", 183359 * MiB, 2.25e15)
H200 = Gpu("h200-141gb", "H200 141GB", 143771 * MiB, 989e12, 67e12)
H100_80 = Gpu("h100-80gb", "H100 80GB", 81559 * MiB, 989e12, 67e12)
A100_80 = Gpu("a100-80gb", "A100 80GB", 81920 * MiB, 312e12, 19.5e12)
L40S = Gpu("l40s-48gb", "L40S 48GB", 46068 * MiB, 362e12, 91.6e12)
A100_40 = Gpu("a100-40gb", "A100 40GB", 40960 * MiB, 312e12, 19.5e12)
A10G = Gpu("a10g-24gb", "A10G 24GB", 23028 * MiB, 70e12, 31.2e12)
H100_PCIE = Gpu("h100-pcie-80gb", "H100 PCIe 80GB", 81559 * MiB, 756e12, 51e12)  # not a plan column: MFU only
GPUS = (B200, H200, H100_80, A100_80, L40S, A100_40, A10G)  # the fit table's columns, about largest first
# `resources.gpu` kind -> the boards it may be scheduled on (`none`, a CPU job, has none)
KINDS: dict[str, tuple[Gpu, ...]] = {
    "h100": (H100_80,), "h200": (H200,), "b200": (B200,), "a100": (A100_80, A100_40), "l40s": (L40S,),
    "a10g": (A10G,), "any": GPUS,
}
# `torch.cuda.get_device_name()` -> board: (words the name must hold, words it must not hold, board), first match.
# Names as the driver reports them: "NVIDIA H100 80GB HBM3", "NVIDIA H100 PCIe", "NVIDIA A100-SXM4-40GB",
# "NVIDIA A100 80GB PCIe", "NVIDIA L40S", "NVIDIA A10G", "NVIDIA H200", "NVIDIA B200". NVL boards (lower clocks)
# and anything else are unknown: MFU is then not reported.
NAMES: tuple[tuple[tuple[str, ...], tuple[str, ...], Gpu], ...] = (
    (("b200",), ("nvl",), B200),
    (("h200",), ("nvl",), H200),
    (("h100", "pcie"), (), H100_PCIE),
    (("h100",), ("nvl", "pcie"), H100_80),
    (("a100", "80gb"), (), A100_80),
    (("a100",), (), A100_40),
    (("l40s",), (), L40S),
    (("a10g",), (), A10G),
)


def board(device_name: str) -> Gpu | None:
    """The catalogued board a CUDA device name is, or None when it is not in the catalog."""
    name = device_name.lower()
    for needed, excluded, gpu in NAMES:
        if all(w in name for w in needed) and not any(w in name for w in excluded):
            return gpu
    return None


def deciding_gpu(gpu_type: str) -> Gpu:
    """The smallest GPU `resources.gpu` may be scheduled on."""
    return min(KINDS[gpu_type], key=lambda g: g.capacity)
