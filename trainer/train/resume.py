"""The Trainer side of checkpoints: what goes into one, when, and how a restarted job continues from it.

- `ResumableTrainer` feeds the Trainer each rank's own data stream (trainer/train/datastate.py), takes
  the stream position off each trained batch, and after the Trainer wrote a checkpoint locally
  (adapter, optimizer, scheduler, RNG states, trainer_state.json; DeepSpeed and FSDP through
  their own state saving) its `PublishCheckpoint` callback (`on_save`) adds `kubetune_state.json` and
  publishes it to `output.uri` (trainer/train/checkpoint.py): node by node, then the manifest, last, from rank 0.
- `StopOnSignal` turns a SIGTERM on any rank into a checkpoint and a stop at the same step on all.
- `plan` decides at start-up: the output's manifest names this job (same `KUBETUNE_JOB_NAME`)
  -> resume from its latest checkpoint, once the spec is checked to train the same thing;
  another job or none -> start at step 0.

What resumes exactly (same weights as an uninterrupted run): `ddp` on the same world size (the RNG
state of each rank is restored). On another world size `ddp` resumes with the full optimizer state
and the data position re-sharded (no row lost or repeated), but the batches are cut differently
from there on. `zero2`/`zero3`/`fsdp` save sharded states through DeepSpeed / torch DCP and
resume on the same world size only: a different one is refused at start-up.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from peft import PeftModel
from torch.utils.data import DataLoader
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from trainer import ranks
from trainer.data.prefetch import PrefetchLoader
from trainer.spec.errors import UsageError
from trainer.tracking.tracker import MeteredTrainer
from trainer.train import checkpoint
from trainer.train.datastate import TAG, Tagged, TaggedCollator
from trainer.train.head import Head, head_loss
from trainer.train.loss import TokenMeanLoss
from trainer.train.preemption import Signals

# Spec fields a resumed job may change: where and how it runs, not what it trains.
MAY_CHANGE = ("resources.", "tracking.", "eval.", "export", "matrix", "output.", "data.eval",
              "training.save_steps", "training.keep_checkpoints", "training.logging_steps", "training.eval_steps")
SHARDED = ("zero2", "zero3", "fsdp")


class ResumeError(UsageError, ValueError):
    """A checkpoint this job cannot resume from as it is now; the message says what to change."""


@dataclass
class Resume:
    manifest: checkpoint.Manifest
    entry: checkpoint.Entry
    local_dir: Path
    state: dict[str, Any] = field(default_factory=dict)  # kubetune_state.json

    @property
    def step(self) -> int:
        return self.entry.step


def differences(saved: dict[str, str], now: dict[str, str]) -> list[str]:
    keys = sorted(k for k in set(saved) | set(now) if not k.startswith(MAY_CHANGE))
    return [f"{k}: {saved.get(k, '(unset)')} then, {now.get(k, '(unset)')} now" for k in keys
            if saved.get(k) != now.get(k)]


def plan(manifest: checkpoint.Manifest | None, job_name: str, spec_flat: dict[str, str], world_size: int,
         strategy: str) -> checkpoint.Manifest | None:
    """The manifest to resume from, or None to start at step 0; ResumeError when resuming cannot work."""
    if manifest is None or manifest.job_name != job_name or manifest.latest is None:
        return None
    if problems := differences(manifest.spec, spec_flat):
        raise ResumeError(
            f"the checkpoints of job {job_name} were trained with another spec: " + "; ".join(problems)
            + ". Resume with the same values (only resources, tracking, eval, export and the checkpoint and logging "
            "cadence may change), or start afresh with another output.uri"
        )
    before = manifest.latest.world_size
    if strategy in SHARDED and before != world_size:
        raise ResumeError(
            f"the latest checkpoint of job {job_name} was written by {before} ranks and this run has {world_size}: "
            f"training.strategy `{strategy}` saves sharded optimizer state, which resumes on the same world size "
            f"only. Resume with {before} ranks (resources.nodes x resources.gpus_per_node), or use `ddp`"
        )
    return manifest


def gather(obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (one process: [obj])."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


class StopOnSignal(TrainerCallback):
    """After each optimizer step: did any rank get SIGTERM? If so every rank saves and stops at this step.

    The last step writes no checkpoint (the final adapter follows at once); so a restarted job
    always has a step left to train, and one that is stopped while saving repeats at most the
    steps since its last checkpoint."""

    def __init__(self, signals: Signals):
        self.signals = signals
        self.stopped_at: int | None = None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step >= state.max_steps:
            control.should_save = False
            return control
        flag = torch.tensor([1.0 if self.signals.received is not None else 0.0], device=args.device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        if flag.item() > 0:
            self.stopped_at = state.global_step
            control.should_log = True  # the loss since the last log line is not lost
            control.should_save = True
            control.should_training_stop = True
        return control

    def stopped_early(self, max_steps: int) -> bool:
        return self.stopped_at is not None and self.stopped_at < max_steps


class Checkpointer:
    """Publishes the Trainer's local checkpoints to `output.uri` with the job's own state."""

    def __init__(self, output: str, job_name: str, spec_flat: dict[str, str], keep: int,
                 extra: Callable[[], dict[str, Any]], say: Callable[[str], None]):
        self.output, self.job_name, self.spec_flat, self.keep = output, job_name, spec_flat, keep
        self.extra = extra  # rank 0's additions: MLflow run id, sample answers, unsent metrics, resumes
        self.say = say
        self.last: checkpoint.Entry | None = None

    def save(self, trainer: ResumableTrainer, local: Path) -> checkpoint.Entry | None:
        args, step = trainer.args, trainer.state.global_step
        per_rank = gather({"data": trainer.data_state, "rows": trainer.rows_seen})
        tokens = trainer.tokens_so_far()  # a collective: every rank calls it
        rows = trainer.rows_before + sum(r["rows"] for r in per_rank)
        if ranks.is_main():
            extra = self.extra()
            state = {"format": checkpoint.FORMAT, "job_name": self.job_name, "step": step,
                     "world_size": args.world_size, "data": {"world_size": args.world_size,
                                                             "ranks": [r["data"] for r in per_rank]},
                     "rows_trained": rows, "tokens_trained": tokens, **extra}
            local.mkdir(parents=True, exist_ok=True)
            (local / checkpoint.STATE).write_text(json.dumps(state, indent=1) + "\n", encoding="utf-8")
        barrier()  # every rank's files are in the node's local folder
        files = checkpoint.publish(local, self.output, step) if ranks.is_local_main() else {}
        merged: dict[str, dict[str, Any]] = {}
        for node_files in gather(files):
            for rel, info in node_files.items():
                merged.setdefault(rel, info)
        entry = None
        if ranks.is_main():
            entry = checkpoint.new_entry(step, args.world_size, merged, rows)
            checkpoint.commit(self.output, entry, self.job_name, extra.get("run_id"), self.spec_flat, self.keep)
            self.say(f"checkpoint {entry.name}: {len(merged)} files in {checkpoint.folder(self.output)}")
        barrier()  # no rank leaves (or exits on SIGTERM) before the manifest names the checkpoint
        if ranks.is_local_main():
            shutil.rmtree(local, ignore_errors=True)
        self.last = entry
        return entry


class PublishCheckpoint(TrainerCallback):
    """Once the Trainer has written a checkpoint into its local `output_dir` (every rank: `on_save`), publish it
    to `output.uri` with the job's own state (`Checkpointer.save`, a collective)."""

    def __init__(self, trainer: ResumableTrainer, checkpointer: Checkpointer):
        self.trainer, self.checkpointer = trainer, checkpointer

    def on_save(self, args, state, control, **kwargs):
        local = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"  # where the Trainer wrote it
        self.checkpointer.save(self.trainer, local)


class ResumableTrainer(MeteredTrainer):
    """A Trainer over each rank's own data stream whose checkpoints go to `output.uri` with the data position."""

    def __init__(self, *args: Any, checkpointer: Checkpointer, prefetch: int = 0, head: Head | None = None,
                 **kwargs: Any):
        self.prefetch = prefetch  # micro-batches made ahead by a background thread (trainer/data/prefetch.py)
        self.train_loader: PrefetchLoader | None = None
        self.loss_fn = TokenMeanLoss(head)  # one loss definition for every model (trainer/train/loss.py)
        super().__init__(*args, compute_loss_func=self.loss_fn, **kwargs)
        self.checkpointer = checkpointer
        self.add_callback(PublishCheckpoint(self, checkpointer))
        self.data_state: dict[str, Any] | None = None  # the stream position after the last trained batch
        self.rows_seen = 0  # rows (not padding) this rank trained in this attempt
        self.rows_before = 0  # rows all ranks trained before this attempt (from the checkpoint)

    def get_train_dataloader(self) -> DataLoader:
        """The rank's stream as it is: no sampler, no accelerate re-sharding; its own generator, so that
        starting the loader draws nothing from the global RNG a resumed run has just restored. With `prefetch`,
        a thread makes that many batches ahead (the same batches; each carries its own stream position)."""
        batch = self.args.train_batch_size
        self.train_loader = PrefetchLoader(Tagged(self.train_dataset, batch), batch_size=batch,
                                           collate_fn=TaggedCollator(self.data_collator), num_workers=0,
                                           pin_memory=self.args.dataloader_pin_memory, generator=torch.Generator(),
                                           depth=self.prefetch)
        return self.train_loader

    def train(self, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's; then the prefetch worker is stopped (also on an error or a SIGTERM stop) and the stream is
        put back at the position after the last trained batch: its accounting counts trained rows, not prefetched."""
        try:
            result = super().train(*args, **kwargs)
        finally:
            if self.train_loader is not None:
                self.train_loader.close()
        if self.data_state is not None:
            self.train_dataset.load_state_dict(self.data_state)
        return result

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        """Takes the stream position off each micro-batch as it trains (trainer/train/datastate.py)."""
        tag = inputs.pop(TAG)
        self.rows_seen += tag["rows"]
        if tag["state"] is not None:
            self.data_state = tag["state"]
        return super().training_step(model, inputs, num_items_in_batch)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """With a head (`training.loss: chunked`, `liger`, `cce`), the model's head computes one position per row and
        the loss comes from the decoder's hidden states at the trained positions (trainer/train/head.py)."""
        return head_loss(self.loss_fn, super().compute_loss, model, inputs, return_outputs, num_items_in_batch)

    def evaluation_loop(self, *args: Any, **kwargs: Any) -> Any:
        """The Trainer's loop; `<prefix>_loss` is then the token-weighted mean over every rank's eval tokens
        (the Trainer's own is a mean of per-batch means)."""
        self.loss_fn.start()
        try:
            output = super().evaluation_loop(*args, **kwargs)
        finally:
            total, count = self.loss_fn.finish()
        prefix = kwargs.get("metric_key_prefix", args[4] if len(args) > 4 else "eval")
        sums = self.accelerator.reduce(torch.tensor([total, float(count)], dtype=torch.float64,
                                                    device=self.args.device), reduction="sum")
        if float(sums[1]) > 0:
            output.metrics[f"{prefix}_loss"] = float(sums[0] / sums[1])
        return output

    def tokens_so_far(self) -> int:
        """Trained tokens of every attempt and rank up to now (a collective)."""
        pending = self._pending if self._pending is not None else torch.zeros((), dtype=torch.long)
        return self.tokens_trained + int(self.accelerator.reduce(pending.to(self.args.device), reduction="sum").item())

    def rows_so_far(self) -> int:
        """Rows (not padding) trained by every attempt and rank (a collective)."""
        return self.rows_before + sum(gather(self.rows_seen))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Under FSDP2, gather only the trainable (adapter) weights to rank 0: the Trainer's own save gathers the
        whole model there (FULL_STATE_DICT) at every checkpoint and at the end, 140 GB for a 70B model in bf16."""
        if self.is_fsdp_enabled and self.accelerator.is_fsdp2 and isinstance(self.model, PeftModel):
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
            state_dict = get_model_state_dict(self.model, options=options)  # a collective; rank 0 gets the tensors
            if self.args.should_save:
                self.model.save_pretrained(output_dir or self.args.output_dir, state_dict=state_dict)
            return
        super().save_model(output_dir, _internal_call)
