"""TRL's preference trainers (trl 1.16: DPOTrainer, KTOTrainer, experimental ORPOTrainer) with our job around them.

The one module that reaches into TRL beyond its documented constructor, so that a TRL upgrade breaks here, in one
place, and in tests/unit/test_trl_adapter.py (which checks the signatures these overrides rely on):

- `_prepare_dataset(dataset, processing_class, args, dataset_name)` (DPO, KTO): TRL would apply the chat template and
  tokenize text rows again. Ours are tokenized already by trainer/data/preference.py, through our own templates,
  reasoning and turn-ending rules and bad-row policy; the override checks their columns and returns them (KTO: with
  the KL completions TRL would add, the same rotation).
- `tokenize_row(feature, model=None)` (ORPO, a public method): turns our ids into ORPO's columns.
- `_precompute_ref_logps(dataset, name, batch_size)` (DPO, KTO; `preference.precompute_reference`): TRL computes the
  reference log-probabilities on every rank and gathers them to every rank, then rank 0 writes them to a cache file
  that every rank reads back, which needs one filesystem for all ranks: a cluster's nodes share none, and even on one
  machine each process keeps an in-memory dataset's cache files in its own temporary folder (rank 1 failed with
  FileNotFoundError). Ours makes the same passes (TRL's `compute_ref_log_probs`, its DeepSpeed inference engine under
  ZeRO) and each rank adds the gathered values to its dataset in memory.

`PreferenceParts` (first in the MRO, before MeteredTrainer and the TRL trainer) adds what `ResumableTrainer` gives SFT:
checkpoints published to `output.uri` (trainer/train/resume.py `PublishCheckpoint`), the rows and tokens trained, and
the rows each step runs for the model FLOPs and MFU (`meter`, trainer/tracking/speed.py: the trained rows, and the
forward-only ones: the reference forward unless precomputed, KTO's KL rows; as TRL 1.16's `_compute_loss` runs them);
and it keeps the adapter's dtype, which TRL would cast to bfloat16 on a quantized (QLoRA) base.
TRL's trainers keep a frozen copy of the starting adapter named `ref` as the reference model; it is rebuilt at every
start from the adapter as it starts (a resumed job then loads the checkpoint into the trained one), so the saved
adapter folders leave it out.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from trl import DPOTrainer, KTOTrainer
from trl.experimental.orpo import ORPOTrainer

from trainer import say
from trainer.tracking.tracker import MeteredTrainer
from trainer.train.resume import Checkpointer, PublishCheckpoint, gather

REF_ADAPTER = "ref"  # the name TRL 1.16 gives the frozen copy of the starting adapter
PAIRED = ("prompt_ids", "chosen_ids", "rejected_ids")
UNPAIRED = ("prompt_ids", "completion_ids", "label")
IGNORE = -100


class PreferenceParts:
    """What every preference trainer of ours adds to TRL's (see the module docstring)."""

    columns: tuple[str, ...] = PAIRED
    reference_columns: tuple[str, str] = ("ref_chosen_logps", "ref_rejected_logps")  # TRL's names for the collator
    labelled_head = True  # DPO and KTO: TRL's fused LM head, at the positions with a label only

    def __init__(self, *args: Any, checkpointer: Checkpointer, **kwargs: Any):
        self.rows_seen = 0  # rows (pairs, or KTO rows) this rank trained in this attempt
        self.rows_before = 0  # rows all ranks trained before this attempt (from the checkpoint)
        self.data_state = None  # the Trainer's own sampler position: restored by its resume, not by a stream state
        model = kwargs["model"]
        dtypes = {n: p.dtype for n, p in model.named_parameters() if p.requires_grad}
        super().__init__(*args, **kwargs)
        # TRL casts a quantized (QLoRA) model's trainable weights to bfloat16; they train in the dtype our loading
        # gave them (float32 adapters, as for SFT: trainer/model/bnb_adapter.py), and so do the optimizer's states.
        for name, param in model.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])
        self.checkpointer = checkpointer
        self.add_callback(PublishCheckpoint(self, checkpointer))  # type: ignore[attr-defined]

    def _prepare_dataset(self, dataset: Dataset, processing_class: Any, args: Any, dataset_name: str) -> Dataset:
        missing = [c for c in self.columns if c not in dataset.column_names]
        if missing:
            raise ValueError(f"the {dataset_name} rows lack {missing}: build them with trainer.data.preference")
        return dataset

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        """The reference log-probabilities of every row, added as columns on every rank (see the module docstring)."""
        args, accelerator = self.args, self.accelerator  # type: ignore[attr-defined]
        started = time.monotonic()
        loader = accelerator.prepare(DataLoader(dataset, batch_size=batch_size, collate_fn=self.data_collator,  # type: ignore[attr-defined]
                                                num_workers=args.dataloader_num_workers,
                                                pin_memory=args.dataloader_pin_memory, shuffle=False))
        if self.ref_model is None and self.is_deepspeed_enabled:  # type: ignore[attr-defined]
            from trl.models import prepare_deepspeed  # ZeRO: places (1/2) or gathers (3) the parameters, built once

            if self._precompute_engine is None:  # type: ignore[has-type]
                self._precompute_engine = prepare_deepspeed(self.model, accelerator)  # type: ignore[attr-defined]
            model = self._precompute_engine
        else:
            model = self.ref_model or self.model  # type: ignore[attr-defined]
        first: list[torch.Tensor] = []
        second: list[torch.Tensor] = []
        for batch in loader:
            a, b = self.compute_ref_log_probs(model, batch)  # type: ignore[attr-defined]
            if b is None:  # KTO without its KL term
                first.append(accelerator.gather_for_metrics(a).cpu())
            else:  # in dataset order: the gathered micro-batches of consecutive ranks, the last one's padding dropped
                a, b = accelerator.gather_for_metrics((a, b))
                first.append(a.cpu())
                second.append(b.cpu())
        values = [torch.cat(first)] + ([torch.cat(second)] if second else [])
        if len(values[0]) != len(dataset):
            raise RuntimeError(f"reference log-probabilities of the {name} rows: {len(values[0])} for {len(dataset)} rows")
        for column, value in zip(self.reference_columns, values, strict=False):
            dataset = dataset.add_column(column, value.float().numpy())
        say.say(f"reference log-probabilities of the {len(dataset)} {name} rows precomputed in "
                f"{time.monotonic() - started:.1f}s (preference.precompute_reference)", main_only=True)
        return dataset

    def meter(self, inputs: dict[str, Any]) -> None:
        for rows, forward_only in self.step_rows(inputs):
            self.speed.add(rows, forward_only)  # type: ignore[attr-defined]

    def step_rows(self, inputs: dict[str, Any]) -> Iterator[tuple[dict[str, torch.Tensor], bool]]:
        """DPO's: the chosen and rejected rows trained, then (unless precomputed) their reference forward."""
        rows = completion_rows(inputs)
        yield rows, False
        if "ref_chosen_logps" not in inputs:
            yield rows, True

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        self.rows_seen += rows_in(inputs)
        return super().training_step(model, inputs, num_items_in_batch)  # type: ignore[misc]

    def tokens_so_far(self) -> int:
        """Trained (completion) tokens of every attempt and rank up to now (a collective)."""
        pending = self._pending if self._pending is not None else torch.zeros((), dtype=torch.long)  # type: ignore[attr-defined]
        reduced = self.accelerator.reduce(pending.to(self.args.device), reduction="sum")  # type: ignore[attr-defined]
        return self.tokens_trained + int(reduced.item())  # type: ignore[attr-defined]

    def rows_so_far(self) -> int:
        return self.rows_before + sum(gather(self.rows_seen))

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """The Trainer's save, without the frozen reference adapter (rebuilt at every start)."""
        super().save_model(output_dir, _internal_call)  # type: ignore[misc]
        if self.args.should_save:  # type: ignore[attr-defined]
            shutil.rmtree(Path(output_dir or self.args.output_dir) / REF_ADAPTER, ignore_errors=True)  # type: ignore[attr-defined]


def completion_rows(inputs: dict[str, Any], prefix: str = "") -> dict[str, torch.Tensor]:
    """TRL's padded rows (`input_ids`, `attention_mask`, `completion_mask`) as the FLOPs count reads them: labels
    where the completion is."""
    ids = inputs[f"{prefix}input_ids"]
    return {"input_ids": ids, "attention_mask": inputs[f"{prefix}attention_mask"],
            "labels": ids.masked_fill(inputs[f"{prefix}completion_mask"] == 0, IGNORE)}


def rows_in(inputs: dict[str, Any]) -> int:
    """Rows of a collated batch: DPO's stacks chosen then rejected (2 per pair); KTO's and ORPO's have one per row."""
    if "chosen_input_ids" in inputs:  # ORPO
        return int(inputs["chosen_input_ids"].shape[0])
    if "label" in inputs:  # KTO
        return int(inputs["label"].shape[0])
    return int(inputs["input_ids"].shape[0]) // 2


class DpoTrainer(PreferenceParts, MeteredTrainer, DPOTrainer):
    columns = PAIRED


class KtoTrainer(PreferenceParts, MeteredTrainer, KTOTrainer):
    columns = UNPAIRED
    reference_columns = ("ref_logps", "ref_KL_logps")

    def step_rows(self, inputs: dict[str, Any]) -> Iterator[tuple[dict[str, torch.Tensor], bool]]:
        """The rows trained, the KL rows forward (no grad), then (unless precomputed) the reference forward of both."""
        rows = completion_rows(inputs)
        kl = [completion_rows(inputs, "KL_")] if "KL_input_ids" in inputs else []
        yield rows, False
        for extra in kl:
            yield extra, True
        if "ref_logps" not in inputs:
            for again in [rows, *kl]:
                yield again, True

    def _prepare_dataset(self, dataset: Dataset, processing_class: Any, args: Any, dataset_name: str) -> Dataset:
        """TRL's KL completions: each row's completion paired with the previous row's prompt, within each batch of
        `per_device_train_batch_size` rows in dataset order (KTO samples sequentially)."""
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if not self.calculate_KL:
            return dataset

        def rotate(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            completions = batch["completion_ids"]
            return {**batch, "KL_completion_ids": [completions[-1], *completions[:-1]]}

        return dataset.map(rotate, batched=True, batch_size=args.per_device_train_batch_size)


class OrpoTrainer(PreferenceParts, MeteredTrainer, ORPOTrainer):
    columns = PAIRED
    labelled_head = False  # ORPO's trainer takes the model's own logits, at every position

    def step_rows(self, inputs: dict[str, Any]) -> Iterator[tuple[dict[str, torch.Tensor], bool]]:
        """The chosen and the rejected rows, trained; no reference."""
        for side in ("chosen", "rejected"):
            yield {"input_ids": inputs[f"{side}_input_ids"], "attention_mask": inputs[f"{side}_attention_mask"],
                   "labels": inputs[f"{side}_labels"]}, False

    def tokenize_row(self, feature: dict[str, Any], model: Any = None) -> dict[str, list[int]]:
        """ORPO's columns from our ids: prompt, then each answer's input ids, attention mask and labels (the prompt
        masked), as TRL's own tokenize_row builds them for a decoder-only model."""
        prompt, row = list(feature["prompt_ids"]), {}
        row["prompt_input_ids"], row["prompt_attention_mask"] = prompt, [1] * len(prompt)
        for side in ("chosen", "rejected"):
            ids = prompt + list(feature[f"{side}_ids"])
            row[f"{side}_input_ids"], row[f"{side}_attention_mask"] = ids, [1] * len(ids)
            row[f"{side}_labels"] = [IGNORE] * len(prompt) + list(feature[f"{side}_ids"])
        return row


TRAINERS: dict[str, type] = {"dpo": DpoTrainer, "kto": KtoTrainer, "orpo": OrpoTrainer}
