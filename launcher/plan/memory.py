"""The memory estimate: peak bytes per GPU (or per CPU process) of one LoRA training step.

The peak of a step is reached at the start of the backward pass, when every saved activation,
the logits and their gradient are alive next to the weights, the adapter, its gradients and the
optimizer state. Each term below says what it counts; the activation terms itemise the tensors
autograd saves in one decoder layer of transformers 5.x with PEFT, as measured with
`torch.autograd.graph.saved_tensors_hooks` (bench/plan.py compares the total against measured
peaks on CPU). Same code for `launch plan`, `launch submit` and the bench.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from launcher.plan.arch import Architecture, Linear
from trainer.spec.job import JobSpec

GiB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# bitsandbytes NF4 with double quantization: 4 bits per weight, an 8-bit absmax per block of 64 and
# an fp32 constant per 256 blocks; LLM.int8: one byte per weight and an fp32 scale per output row.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
CUDA_CONTEXT = int(0.75 * GiB)  # CUDA context, cuBLAS/cuDNN workspaces and kernels of a torch process
NCCL_BUFFERS = int(0.5 * GiB)  # communicator buffers of a multi-GPU job
DS_REDUCE_BUCKET = 500_000_000  # DeepSpeed's default reduce_bucket_size (accelerate sets none): one bucket
DS_PREFETCH = 50_000_000  # DeepSpeed's default stage3_prefetch_bucket_size (elements)
ALLOCATOR_SLACK = 0.10  # caching-allocator fragmentation, as a share of the transient (activation) memory


@dataclass(frozen=True)
class Setup:
    """Everything besides the architecture that the estimate depends on."""

    dtype: str = "bfloat16"
    quantization: str = "none"  # none | 4bit | 8bit
    method: str = "lora"  # lora | dora
    r: int = 16
    target_modules: str | tuple[str, ...] = "all-linear"
    target_parameters: tuple[str, ...] = ()  # fused expert tensors (adapter.target_parameters)
    dropout: float = 0.05
    batch: int = 4  # rows per device per micro-step
    seq_len: int = 2048
    checkpointing: bool = False
    strategy: str = "ddp"  # ddp | zero2 | zero3 | fsdp
    offload: str = "none"  # none | optimizer | all: state moved to CPU memory (training.offload)
    world_size: int = 1
    attn: str = "sdpa"  # sdpa | eager | flash_attention_2
    device: str = "cuda"  # cuda | cpu

    @classmethod
    def from_spec(cls, spec: JobSpec) -> Setup:
        a, t, res = spec.adapter, spec.training, spec.resources
        targets = a.target_modules if isinstance(a.target_modules, str) else tuple(a.target_modules)
        return cls(
            dtype=spec.model.dtype, quantization=spec.model.quantization, method=a.method, r=a.r,
            target_modules=targets, target_parameters=tuple(a.target_parameters or ()), dropout=a.dropout, batch=t.per_device_batch_size, seq_len=spec.data.max_seq_len,
            checkpointing=t.gradient_checkpointing, strategy=t.strategy, offload=t.offload, world_size=res.world_size,
            attn=spec.model.attn_implementation, device="cpu" if res.gpu == "none" else "cuda",
        )

    def with_(self, **changes: object) -> Setup:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def sharded(self) -> bool:
        return self.strategy in ("zero3", "fsdp")

    @property
    def deepspeed(self) -> bool:
        return self.strategy in ("zero2", "zero3")

    @property
    def params_offloaded(self) -> bool:
        """ZeRO-3 / FSDP with `offload: all`: the frozen weights live in CPU memory between uses."""
        return self.offload == "all" and self.sharded

    @property
    def mixed(self) -> bool:
        """bf16/fp16 mixed precision on GPU (on CPU the trainer runs without it)."""
        return self.device == "cuda" and self.dtype != "float32"

    @property
    def autocast(self) -> bool:
        """torch autocast around fp32 adapters (PEFT upcasts adapters of 16-bit models); DeepSpeed instead
        casts the whole model, adapters included, to its 16-bit dtype."""
        return self.mixed and not self.deepspeed


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


def _site_bytes(width: int, readers: list[Linear], setup: Setup, shared: bool) -> float:
    """Saved bytes per token where `readers` (targeted linears) read one input of `width` features.

    Each adapter's lora_A keeps its own input when dropout makes one (plus the dropout mask) or when
    it casts the input to its own dtype: under autocast PEFT's fp32 adapters get a 16-bit copy each;
    without autocast (CPU) a 16-bit model's input is cast to the fp32 adapter. Otherwise (fp32, or
    DeepSpeed's all-16-bit model) the input is saved once, unless it is saved anyway (`shared`)."""
    if not readers:
        return 0.0
    a = DTYPE_BYTES[setup.dtype]
    a_in = 2 if setup.mixed else 4  # what lora_A's input is: 16-bit under autocast / DeepSpeed, else fp32
    copies = setup.autocast or a_in != a
    mask = 1 if setup.device == "cuda" else a_in  # a bool mask on CUDA, a float one on CPU
    if setup.dropout > 0:
        saved = len(readers) * width * (mask + a_in)
    elif copies:
        saved = len(readers) * width * a_in
    else:
        saved = 0 if shared else width * a
    saved += len(readers) * setup.r * a_in  # lora_B's input
    if setup.method == "dora":  # the base and adapter outputs, kept for the magnitude's gradient
        saved += sum(2 * lin.out_features * a for lin in readers)
    return saved


def layer_activation_bytes(arch: Architecture, setup: Setup) -> float:
    """Bytes autograd saves per token in one decoder layer (no checkpointing)."""
    a = DTYPE_BYTES[setup.dtype]
    h, q, kv, inter = arch.hidden_size, arch.q_dim, arch.kv_dim, arch.intermediate_size
    targets = [lin for lin in arch.targets(setup.target_modules) if lin.part in ("attention", "mlp")]

    def readers(*names: str) -> list[Linear]:
        return [lin for lin in targets if lin.name in names]

    saved = arch.norms_per_layer * (4 * h + 4)  # RMSNorm: an fp32 copy of its input and 1/rms
    if arch.qk_norm:
        saved += 4 * (q + kv) + 4 * (arch.num_heads + arch.num_kv_heads)
    saved += _site_bytes(h, readers("q_proj", "k_proj", "v_proj", "qkv_proj"), setup, shared=False)
    saved += _site_bytes(q, readers("o_proj"), setup, shared=True)  # the attention output is saved anyway
    saved += _site_bytes(h, readers("gate_proj", "up_proj", "gate_up_proj"), setup, shared=False)
    saved += _site_bytes(inter, readers("down_proj"), setup, shared=False)
    if setup.quantization == "8bit":  # LLM.int8 saves each quantized linear's input (4-bit saves none)
        saved += (2 * h + inter) * a
    flash = setup.attn == "flash_attention_2"
    kv_saved = kv if flash or kv == q else q  # with a (packing) mask sdpa/eager run on repeated k/v heads
    saved += (2 * q + 2 * kv_saved) * a  # query, key, value and attention output
    kind = attention_kind(arch, setup)
    if kind == "eager":  # softmax output in fp32 (+ its 16-bit copy)
        saved += arch.num_heads * setup.seq_len * (4 + (a if a != 4 else 0))
    else:
        saved += arch.num_heads * 4  # log-sum-exp
    if kind == "sdpa":  # sdpa turns the boolean (packing) mask into an additive one per call and keeps it
        saved += setup.seq_len * a
    if arch.num_experts:  # per routed token and expert: gate/up outputs, gated activations, weighted output
        saved += arch.experts_per_token * (6 * inter + h) * a + arch.num_experts * 4  # gpt-oss's clamped SwiGLU
    else:
        saved += 3 * inter * a  # the activation's input and output, and the up projection
    return saved


def attention_kind(arch: Architecture, setup: Setup) -> str:
    """What runs: gpt-oss's attention sinks run eager in kubetune whatever is asked (trainer.model.arch)."""
    if setup.attn != "eager" and not arch.sdpa:
        return "eager"
    return setup.attn


def activations(arch: Architecture, setup: Setup) -> int:
    """Saved activations of one micro-batch, alive together with the logits at the start of the backward pass.

    Checkpointing keeps only each layer's input and recomputes one layer at a time later in the backward
    pass, when the logits and their gradient are already freed: that layer adds only what exceeds them."""
    tokens = setup.batch * setup.seq_len
    a = DTYPE_BYTES[setup.dtype]
    layer = layer_activation_bytes(arch, setup) * tokens
    if setup.checkpointing:
        body = arch.num_layers * arch.hidden_size * a * tokens + max(0, layer - logits(arch, setup))
    else:
        body = arch.num_layers * layer
    final_norm = (4 * arch.hidden_size + 4) * tokens
    masks = arch.mask_kinds * setup.batch * setup.seq_len**2 * (1 if attention_kind(arch, setup) != "eager" else a)
    if attention_kind(arch, setup) == "flash_attention_2":
        masks = 0  # packed rows reach flash-attention as position ids, no dense mask
    return int(body + final_norm + masks + merged_experts(arch, setup))


def merged_experts(arch: Architecture, setup: Setup) -> int:
    """`target_parameters`: PEFT's ParamWrapper computes each adapted expert tensor as W + delta (full size) in
    every forward, and the experts' matmuls keep it alive until the backward pass: one per targeted tensor per
    layer, or for one layer at a time with checkpointing."""
    per_layer = sum(f.experts * f.dim1 * f.dim2 for f in arch.parameter_targets(setup.target_parameters))
    layers = 1 if setup.checkpointing else arch.num_layers
    return per_layer * layers * DTYPE_BYTES[setup.dtype]


def logits(arch: Architecture, setup: Setup) -> int:
    """batch x seq x vocab: the logits (model dtype), their fp32 copy for the loss, its saved log-softmax and
    the gradient of that at the start of the backward pass."""
    tokens = setup.batch * setup.seq_len
    a = DTYPE_BYTES[setup.dtype]
    per = a + 4 + 4 + 4 if a != 4 else 4 + 4 + 4
    return int(tokens * arch.vocab_size * per)


def dora_scratch(arch: Architecture, setup: Setup) -> int:
    """DoRA's weight norm, one module at a time: the adapter's full-size delta (PEFT computes it through an
    in x in identity) and the merged weight, for the largest targeted linear."""
    lin = max(arch.targets(setup.target_modules), key=lambda x: x.in_features * x.out_features)
    return (lin.in_features + 2 * lin.out_features) * lin.in_features * DTYPE_BYTES[setup.dtype]


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
    if setup.method == "dora":
        parts["DoRA weight norm"] = dora_scratch(arch, setup)
    if setup.device == "cuda":
        transient = parts["activations"] + parts["logits + loss"] + gathered
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
