"""The data pipeline: sources -> formats -> chat template + labels -> packing -> batches.

    items, stats = build_dataset(spec, tokenizer, "train")
    loader = DataLoader(items, batch_size=..., collate_fn=Collator(tokenizer, spec.data.packing))

Training streams instead (`trainer.data.stream.TrainStream`: the same steps, a bounded window at
a time, split across ranks, with a data position for checkpoints); `build_dataset` prepares the
eval split and checks data. TrainStream is not imported here: it needs torch, and `sources` and
`formats` stay light enough for the launcher (torch is imported only when `Collator` builds
tensors).
"""

from trainer.data.builder import build_dataset, conversations
from trainer.data.collator import Collator
from trainer.data.errors import BadRow, DataError
from trainer.data.stats import DataStats

__all__ = ["BadRow", "Collator", "DataError", "DataStats", "build_dataset", "conversations"]
