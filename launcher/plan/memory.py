"""The memory estimate: peak bytes per GPU (or per CPU process) of one LoRA training step.

The peak of a step is reached at the start of the backward pass, when every saved activation,
the logits and their gradient are alive next to the weights, the adapter, its gradients and the
optimizer state. Each term below says what it counts; the activation terms (launcher/plan/activations.py)
itemise the tensors autograd saves in one decoder layer of transformers 5.x with PEFT, as measured with
`torch.autograd.graph.saved_tensors_hooks` (bench/plan.py compares the total against measured
peaks on CPU). Same code for `launch plan`, `launch submit` and the bench. What it depends on besides
the architecture is a Setup (launcher/plan/setup.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from launcher.plan.activations import activations, attention_kind, dora_scratch, logits, reference_forward
from launcher.plan.arch import Architecture, Linear
from launcher.plan.setup import DTYPE_BYTES, Setup

GiB = 1024**3
# bitsandbytes NF4 with double quantization: 4 bits per weight, an 8-bit absmax per block of 64 and
# an fp32 constant per 256 blocks; LLM.int8: one byte per weight and an fp32 scale per output row.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
CUDA_CONTEXT = int(0.75 * GiB)  # CUDA context, cuBLAS/cuDNN workspaces and kernels of a torch process
NCCL_BUFFERS = int(0.5 * GiB)  # communicator buffers of a multi-GPU job
DS_REDUCE_BUCKET = 500_000_000  # DeepSpeed's default reduce_bucket_size (accelerate sets none): one bucket
DS_PREFETCH = 50_000_000  # DeepSpeed's default stage3_prefetch_bucket_size (elements)
ALLOCATOR_SLACK = 0.10  # caching-allocator fragmentation, as a share of the transient (activation) memory


@dataclass
class Estimate:
    parts: dict[str, int]  # label -> bytes, in the order they are printed
    trainable: int  # adapter parameters
    total_params: int
    notes: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def adapter_params(arch: Architecture, setup: Setup) -> int:
    """Exact trainable parameters: r x (in + out) per targeted linear, plus DoRA's magnitude vector (out), and
    r x experts x (dim1 + dim2) per targeted fused expert tensor."""
    total = sum(f.lora_params(setup.r) for f in arch.parameter_targets(setup.target_parameters))
    for lin in arch.targets(setup.target_modules):
        total += lin.count * (setup.r * (lin.in_features + lin.out_features))
        if setup.method == "dora":
            total += lin.count * lin.out_features
    return total


def _weight_bytes(lin: Linear, setup: Setup) -> float:
    if lin.part == "head" or setup.quantization == "none":
        return DTYPE_BYTES[setup.dtype] if not _upcast(setup) else 4
    if setup.quantization == "4bit":
        return NF4_BYTES
    return 1 + 4 / lin.in_features


def _upcast(setup: Setup) -> bool:
    """QLoRA: prepare_model_for_kbit_training casts every non-quantized parameter to fp32; DeepSpeed casts
    them back to its 16-bit dtype."""
    return setup.quantization != "none" and not (setup.deepspeed and setup.mixed)


def base_weights(arch: Architecture, setup: Setup) -> int:
    """Frozen base model bytes when every parameter is resident (before any sharding)."""
    plain = 4 if _upcast(setup) else DTYPE_BYTES[setup.dtype]
    total = sum(lin.weights * _weight_bytes(lin, setup) + lin.biases * plain for lin in arch.linears)
    return int(total + (arch.other_params + arch.expert_params) * plain)


def _gathered(arch: Architecture, setup: Setup) -> int:
    """ZeRO-3 / FSDP: parameters gathered unsharded while a layer runs: the current layer and the next
    (prefetched), plus the embedding and output head (FSDP's root unit; ZeRO-3 gathers them at both ends)."""
    plain = 4 if _upcast(setup) else DTYPE_BYTES[setup.dtype]
    layer = sum((lin.weights * _weight_bytes(lin, setup) + lin.biases * plain) / lin.count for lin in arch.linears
                if lin.part in ("attention", "mlp"))
    layer += arch.expert_params / arch.num_layers * plain
    ends = arch.vocab_size * arch.hidden_size * plain * (1 if arch.tie_word_embeddings else 2)
    prefetch = DS_PREFETCH * plain if setup.deepspeed else layer
    return int(min(layer + prefetch + ends, base_weights(arch, setup)))  # never more than the whole model


def _per_param_bytes(setup: Setup) -> tuple[float, float, float]:
    """(weights, gradients, optimizer state) bytes per trainable parameter on one GPU, sharding included.

    PEFT keeps adapters in fp32; AdamW holds two fp32 moments (8 bytes). DeepSpeed with bf16/fp16 keeps
    16-bit weights and gradients plus an fp32 master copy (counted with the optimizer state)."""
    w = max(1, setup.world_size)
    if setup.deepspeed and setup.mixed:
        weights, grads, optim = 2.0, 2.0, 12.0
    else:
        weights, grads, optim = 4.0, 4.0, 8.0
    if setup.offload != "none":  # the optimizer step runs on the CPU, its state (and master copy) there
        optim = 0.0
    if setup.strategy == "zero2":
        return weights, grads / w, optim / w
    if setup.strategy == "fsdp" and setup.params_offloaded:  # FSDP offloads parameters and gradients together
        return weights / w, 0.0, optim / w
    if setup.sharded:
        return weights / w, grads / w, optim / w
    return weights, grads, optim



def estimate(arch: Architecture, setup: Setup) -> Estimate:
    """Peak bytes per GPU (or per CPU process with `device="cpu"`) of one training step."""
    trainable = adapter_params(arch, setup)
    w_bytes, g_bytes, o_bytes = _per_param_bytes(setup)
    base = base_weights(arch, setup)
    notes: list[str] = []
    if setup.params_offloaded:
        resident, gathered = 0, _gathered(arch, setup)
    elif setup.sharded and setup.world_size > 1:
        resident, gathered = base // setup.world_size, _gathered(arch, setup)
    else:
        resident, gathered = base, 0
    parts = {"base weights": resident}
    if gathered:
        parts["gathered (ZeRO-3/FSDP)"] = gathered
    parts |= {
        "adapter": int(trainable * w_bytes),
        "gradients": int(trainable * g_bytes),
        "optimizer (AdamW)": int(trainable * o_bytes),
        "activations": activations(arch, setup),
        "logits + loss": logits(arch, setup),
    }
    if setup.reference:
        parts["reference forward"] = reference_forward(arch, setup)
    if setup.ref_adapter:  # TRL's frozen "ref" copy of the starting adapter, as the adapter is held
        parts["reference adapter"] = int(trainable * w_bytes)
    if setup.method == "dora":
        parts["DoRA weight norm"] = dora_scratch(arch, setup)
    if setup.device == "cuda":
        transient = parts["activations"] + parts["logits + loss"] + parts.get("reference forward", 0) + gathered
        overhead = CUDA_CONTEXT + (NCCL_BUFFERS if setup.world_size > 1 else 0) + int(ALLOCATOR_SLACK * transient)
        if setup.deepspeed:
            overhead += DS_REDUCE_BUCKET * (2 if setup.mixed else 4)
        parts["CUDA + allocator"] = overhead
    if attention_kind(arch, setup) != setup.attn:
        notes.append(f"{arch.model_type}'s attention sinks run with eager attention (transformers has no sdpa for it "
                     "and flash-attn 2 takes no sinks): estimated with eager's seq² memory")
    if setup.strategy == "ddp" and setup.world_size > 1:
        notes.append("ddp keeps a full copy of the model on every GPU: more GPUs do not lower this")
    if arch.shipped:
        notes.append(arch.shipped + f" to {setup.dtype}")
    return Estimate(parts, trainable, arch.total_params, notes)
