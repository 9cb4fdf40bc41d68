"""The Trainer's `TrainingArguments`, from the job spec: the same on every rank (trainer/train/loop.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from trainer import ranks
from trainer.spec.job import JobSpec


def training_arguments(spec: JobSpec, work: Path, name: str, cpu: bool) -> TrainingArguments:
    """Checkpoints are written locally under `work`/checkpoints first (then published: trainer/train/resume.py).
    A preference objective's arguments are its TRL config's (trainer/train/preference_args.py), from the same values."""
    if spec.training.objective != "sft":
        from trainer.train.preference_args import preference_arguments

        return preference_arguments(spec, argument_values(spec, work, name, cpu))
    return TrainingArguments(**argument_values(spec, work, name, cpu))


def argument_values(spec: JobSpec, work: Path, name: str, cpu: bool) -> dict[str, Any]:
    """The keyword arguments of `TrainingArguments` that every objective shares."""
    t, has_eval = spec.training, spec.data.eval is not None
    gpu_dtype = None if cpu else spec.model.dtype
    deepspeed = t.strategy in ("zero2", "zero3")
    distributed = ranks.world_size() > 1
    return dict(
        output_dir=str(work / "checkpoints"),
        max_steps=t.max_steps or -1, num_train_epochs=t.epochs,
        learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm,
        per_device_train_batch_size=t.per_device_batch_size, per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.grad_accum, seed=t.seed, data_seed=t.seed,
        logging_steps=t.logging_steps, logging_first_step=True,
        save_strategy="steps" if t.save_steps else "no", save_steps=t.save_steps or 500,  # + on SIGTERM
        save_only_model=False, ignore_data_skip=True,  # the data position is the stream's (trainer/train/datastate.py)
        eval_strategy="steps" if has_eval and t.eval_steps else "no", eval_steps=t.eval_steps,
        bf16=gpu_dtype == "bfloat16", fp16=gpu_dtype == "float16",
        use_cpu=cpu and not deepspeed,  # DeepSpeed on CPU runs through DS_ACCELERATOR=cpu (strategy.py)
        ddp_backend="gloo" if distributed and not torch.cuda.is_available() else None,
        ddp_find_unused_parameters=False, average_tokens_across_devices=True,
        remove_unused_columns=False, dataloader_num_workers=0,
        report_to="none", disable_tqdm=True, run_name=name,
    )
