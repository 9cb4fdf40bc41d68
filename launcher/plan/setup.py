"""What the memory estimate depends on besides the architecture (Setup: dtype, quantization, adapter, batch,
sequence length, strategy, ...), read from a spec, and the bytes per element of each training dtype."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from launcher.plan import objective
from trainer.spec.job import JobSpec

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


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
    kernels: str = "none"  # none | torch | liger: fused RMSNorms (both) and SwiGLU/GeGLU (liger) save less
    loss: str = "full"  # full | chunked | liger | cce (training.loss; the spec's default is chunked)
    objective: str = "sft"  # sft | dpo | orpo | kto (training.objective; launcher/plan/objective.py)
    reference: bool = False  # dpo / kto: a reference forward each step (not preference.precompute_reference)
    ref_adapter: bool = False  # dpo / kto: TRL's frozen copy of the starting adapter (trainer/train/trl_adapter.py)

    @classmethod
    def from_spec(cls, spec: JobSpec) -> Setup:
        a, t, res = spec.adapter, spec.training, spec.resources
        targets = a.target_modules if isinstance(a.target_modules, str) else tuple(a.target_modules)
        reference = objective.referenced(t.objective)  # orpo is reference-free
        return cls(
            dtype=spec.model.dtype, quantization=spec.model.quantization, method=a.method, r=a.r,
            target_modules=targets, target_parameters=tuple(a.target_parameters or ()),
            # preference.dropout `off`: TRL switches every dropout off, the adapter's included
            dropout=0.0 if t.objective != "sft" and spec.preference.dropout == "off" else a.dropout,
            batch=t.per_device_batch_size, seq_len=spec.data.max_seq_len,
            checkpointing=t.gradient_checkpointing, strategy=t.strategy, offload=t.offload, world_size=res.world_size,
            attn=spec.model.attn_implementation, device="cpu" if res.gpu == "none" else "cuda",
            kernels=t.kernels, loss=t.loss, objective=t.objective,
            reference=reference and not spec.preference.precompute_reference,
            ref_adapter=reference,
        )

    def with_(self, **changes: object) -> Setup:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @property
    def rows(self) -> int:
        """Rows through the policy (forward + backward) per micro-step: dpo and orpo concatenate each pair's chosen
        and rejected rows; kto's KL rows only go forward, without grad."""
        return self.batch * (2 if self.objective in objective.PAIRED else 1)

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
