"""The data pipeline: sources -> formats -> chat template + labels -> packing -> batches.

    items, stats = build_dataset(spec, tokenizer, "train")
    loader = DataLoader(items, batch_size=..., collate_fn=Collator(tokenizer, spec.data.packing))

Torch is imported only when `Collator` builds tensors; `sources` and `formats` are light enough
for the launcher.
"""

from trainer.data.builder import build_dataset, conversations
from trainer.data.collator import Collator
from trainer.data.errors import BadRow, DataError
from trainer.data.stats import DataStats

__all__ = ["BadRow", "Collator", "DataError", "DataStats", "build_dataset", "conversations"]
