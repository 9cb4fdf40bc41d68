"""The spec's `training` and `eval` sections: optimisation and distribution; sample answers and task metrics.

Part of THE job spec (trainer/spec/job.py, where `JobSpec` holds them). Torch-free.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from trainer.spec.base import Section
from trainer.spec.preference import Objective

# `training.loss: chunked`: logits per chunk of trained positions (float32: 128 MiB), at least LOSS_CHUNK_MIN_ROWS
# rows so a GPU's matmul stays large. The trainer (trainer/train/head.py) and the planner (launcher/plan) read these.
LOSS_CHUNK_LOGITS = 2**25
LOSS_CHUNK_MIN_ROWS = 64


def loss_chunk_rows(vocab: int) -> int:
    """Trained positions per chunk of the chunked loss at a vocabulary of `vocab`."""
    return max(LOSS_CHUNK_MIN_ROWS, LOSS_CHUNK_LOGITS // max(vocab, 1))


class TrainingSpec(Section):
    objective: Objective = Field(
        "sft",
        description="What is learned: `sft` (supervised: the cross-entropy of the answers), or preference tuning "
        "with TRL's trainers on preference data (`data.format: preference | unpaired`, settings in `preference`): "
        "`dpo` (chosen over rejected, against a reference: the base with the adapter as it starts, no second copy), "
        "`orpo` (reference-free: the chosen answers' cross-entropy plus an odds-ratio term), `kto` (rows labelled "
        "desirable or not, paired or unpaired). See docs/preference.md.",
    )
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides `epochs` when set.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (when `max_steps` is unset).")
    learning_rate: float = Field(2.0e-4, gt=0, lt=1, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warm-up."
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    per_device_batch_size: int = Field(4, ge=1, description="Rows per device per micro-step.")
    grad_accum: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    strategy: Literal["ddp", "zero2", "zero3", "fsdp"] = Field(
        "ddp",
        description="Distribution: `ddp`, DeepSpeed `zero2` / `zero3`, or `fsdp`. Becomes the "
        "generated accelerate configuration.",
    )
    offload: Literal["none", "optimizer", "all"] = Field(
        "none",
        description="Move state to CPU memory to fit larger models: `optimizer` (ZeRO-2/3: optimizer states), `all` "
        "(ZeRO-3: parameters too; FSDP: parameters and gradients). Slower; for `zero2`, `zero3` and `fsdp` only.",
    )
    seed: int = Field(42, description="Seed for data order, adapter init and dropout.")
    logging_steps: int = Field(1, ge=1, description="Log metrics every N optimizer steps.")
    save_steps: int | None = Field(
        None,
        ge=1,
        description="Write a checkpoint to `output.uri` every N steps (unset: only when the job is stopped by SIGTERM, "
        "e.g. preempted). A restarted job resumes from the latest one; see docs/operations.md.",
    )
    keep_checkpoints: int = Field(
        2, ge=1, le=100, description="Checkpoints kept in `output.uri/checkpoints/`; older ones are deleted."
    )
    eval_steps: int | None = Field(None, ge=1, description="Evaluate on `data.eval` every N steps (unset: at the end).")
    loss: Literal["chunked", "full", "liger", "cce"] = Field(
        "chunked",
        description="How the LM head and cross-entropy are computed. `chunked`: the head only at positions whose "
        "next-token label exists, the loss in chunks (each chunk's gradient computed at once and its logits freed), so "
        "the `[tokens x vocab]` logits are never whole in memory, under every strategy (`zero3` and `fsdp` gather the "
        "head's sharded weight for it); `full`: the model's own logits at every position (the transformers default); "
        "`liger`: Liger Kernel's fused linear cross-entropy, `cce`: Cut Cross-Entropy (both CUDA only, where "
        "installed; `cce` runs as `chunked` under `zero3` and `fsdp`).",
    )
    kernels: Literal["none", "torch", "liger"] = Field(
        "none",
        description="Fused kernels. `torch`: each RMSNorm as one autograd function in plain PyTorch (CPU and CUDA, "
        "no package; fewer saved tensors, a one-formula backward), checked at start-up against each norm class's own "
        "forward and gradients, a class that differs or is unknown left as it is; `liger`: RMSNorm, RoPE and "
        "SwiGLU/GeGLU with Liger Kernel's Triton kernels (CUDA only, where installed).",
    )
    compile: bool = Field(
        False,
        description="`torch.compile` each decoder layer before training (CUDA only; the first steps compile; see "
        "docs/performance.md for where it helps).",
    )
    padding_free: bool = Field(
        False,
        description="Feed each micro-batch as one flattened row of its samples with restarting position ids and "
        "no padding, which flash-attention's varlen kernels read as separate sequences (needs "
        "`model.attn_implementation: flash_attention_2`, CUDA only). With flash-attention and `data.packing` the "
        "batches are flattened anyway: it keeps packed samples apart only that way.",
    )
    prefetch: int = Field(
        2,
        ge=0,
        le=64,
        description="Optimizer steps' worth of batches (each `grad_accum` micro-batches) a background thread prepares "
        "ahead of the training step, so that a step does not wait while data is read, rendered, tokenized and packed "
        "(0: all of that in the training loop, between steps). The batches are the same; checkpoints hold the "
        "position after the trained ones; the thread is stopped and joined when training ends, fails or is stopped "
        "by SIGTERM.",
    )


GPU_ONLY_FIX = {"kernels": "`training.kernels: none`", "loss": "`training.loss: chunked`",
                "compile": "`training.compile: false`", "padding_free": "`training.padding_free: false`"}


def gpu_option_problems(training: TrainingSpec, attn_implementation: str, gpu: str) -> list[str]:
    """What the spec alone shows the GPU options cannot do (JobSpec's validator): flattened batches without
    flash-attention, CUDA-only options on a CPU job (`resources.gpu: none`). Whether the packages are installed
    and CUDA is there is checked when the trainer starts (trainer/model/kernels.py `preflight`)."""
    problems = []
    if training.padding_free and not attn_implementation.startswith("flash"):
        problems.append(
            f"training.padding_free: true needs `model.attn_implementation: flash_attention_2` (it is "
            f"`{attn_implementation}`): only flash-attention reads the flattened row's samples as separate sequences, "
            "sdpa and eager would build a dense tokens x tokens mask; set it, or `training.padding_free: false` "
            "(packed samples are kept apart under sdpa too)")
    if gpu == "none":
        used = {"kernels": training.kernels == "liger", "loss": training.loss in ("liger", "cce"),
                "compile": training.compile, "padding_free": training.padding_free}
        for field, on in used.items():
            if on:
                value = getattr(training, field)
                problems.append(
                    f"training.{field}: `{str(value).lower()}` runs on CUDA GPUs only and `resources.gpu` is `none` "
                    f"(a CPU job): set {GPU_ONLY_FIX[field]}, or a GPU kind in resources.gpu"
                    + (" (on CPU, inductor compiles C++ for minutes: about 100 s for a 2-layer model's first two "
                       "steps on 2 cores)" if field == "compile" else ""))
    return problems


MetricName = Literal["exact_match", "rouge_l", "json_valid", "mermaid_valid", "cites_existing_source"]


class EvalSpec(Section):
    prompts: list[str] = Field(
        default_factory=list,
        description="Prompts answered before and after training (unset: the first user turns of `data.eval`).",
    )
    num_samples: int = Field(3, ge=0, le=100, description="Held-out prompts to sample when `prompts` is empty.")
    max_new_tokens: int = Field(64, ge=1, le=4096, description="Length of each sample answer.")
    metrics: list[MetricName] = Field(
        default_factory=list,
        description="Task metrics computed on greedy answers to held-out conversations (docs/evaluation.md): "
        "`exact_match`, `rouge_l`, `json_valid`, `mermaid_valid`, `cites_existing_source`.",
    )
    exact_match: Literal["normalized", "exact"] = Field(
        "normalized", description="`exact_match` ignores case and whitespace differences (`normalized`) or not."
    )
    sources_root: str | None = Field(
        None,
        description="Folder that paths cited in answers are looked up in (`cites_existing_source`): a local folder "
        "(relative to the spec's folder; local runs only) or an `s3://` prefix, copied once to the job's cache.",
    )

    @model_validator(mode="after")
    def _metrics(self) -> EvalSpec:
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError("eval.metrics lists a metric twice")
        if "cites_existing_source" in self.metrics and not self.sources_root:
            raise ValueError("metric `cites_existing_source` needs `eval.sources_root`: the folder cited paths must "
                             "exist in (e.g. the repository the answers document)")
        return self
