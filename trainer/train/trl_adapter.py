"""TRL's preference trainers (trl 1.16: DPOTrainer, KTOTrainer, experimental ORPOTrainer) with our job around them.

The one module that reaches into TRL beyond its documented constructor, so that a TRL upgrade breaks here, in one
place, and in tests/unit/test_trl_adapter.py (which checks the signatures these overrides rely on):

- `_prepare_dataset(dataset, processing_class, args, dataset_name)` (DPO, KTO): TRL would apply the chat template and
  tokenize text rows again. Ours are tokenized already by trainer/data/preference.py, through our own templates,
  reasoning and turn-ending rules and bad-row policy; the override checks their columns and returns them (KTO: with
  the KL completions TRL would add, the same rotation).
- `tokenize_row(feature, model=None)` (ORPO, a public method): turns our ids into ORPO's columns.

`PreferenceParts` (first in the MRO, before MeteredTrainer and the TRL trainer) adds what `ResumableTrainer` gives SFT:
checkpoints published to `output.uri` (trainer/train/resume.py `PublishCheckpoint`), the rows and tokens trained; and
it keeps the adapter's dtype, which TRL would cast to bfloat16 on a quantized (QLoRA) base.
TRL's trainers keep a frozen copy of the starting adapter named `ref` as the reference model; it is rebuilt at every
start from the adapter as it starts (a resumed job then loads the checkpoint into the trained one), so the saved
adapter folders leave it out.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from trl import DPOTrainer, KTOTrainer
from trl.experimental.orpo import ORPOTrainer

from trainer.tracking.tracker import MeteredTrainer
from trainer.train.resume import Checkpointer, PublishCheckpoint, gather

REF_ADAPTER = "ref"  # the name TRL 1.16 gives the frozen copy of the starting adapter
PAIRED = ("prompt_ids", "chosen_ids", "rejected_ids")
UNPAIRED = ("prompt_ids", "completion_ids", "label")
IGNORE = -100


class PreferenceParts:
    """What every preference trainer of ours adds to TRL's (see the module docstring)."""

    columns: tuple[str, ...] = PAIRED

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
