"""The data pipeline: sources -> formats -> chat template + labels -> packing -> batches.

    items, stats = build_dataset(spec, tokenizer, "train")
    loader = DataLoader(items, batch_size=..., collate_fn=Collator(tokenizer, spec.data.packing))

Training streams instead (`trainer.data.stream.TrainStream`: the same steps, a bounded window at
a time, split across ranks, with a data position for checkpoints); `build_dataset` prepares the
eval split and checks data. TrainStream is not imported here: it needs torch, and `sources` and
`formats` stay light enough for the launcher (torch is imported only when `Collator` builds
tensors).

Modules, in pipeline order: `sources` (which files a field names; reading rows and reading them
back by cursor), with `records` (the types reading passes around), `jsonl` and `parquet` (one
reader per format); `formats` (row -> conversation), `reasoning`, `render` (conversation ->
token ids + labels) with `turns` (where each assistant turn sits in the rendered text) and
`template_date`; `encode` (a chunk of records -> samples), `packing`, `collator`; `badrows`,
`stats`, `errors`; `builder` (`build_dataset`). Preference data (DPO / ORPO / KTO): `preference`
(`build_preference`) with `preference_rows` (row -> prompt and answers) and `preference_stats`.
Training's stream: `stream` (`TrainStream`), `window` (reading and packing one window of rows), `stripes` (a pass's shuffled order of rows)
with `seeded` (its keyed hashes and permutation), `shards` (which rows a rank reads),
`position` (a stream's saved position) and `accounting` (its row counts over ranks).
"""

from trainer.data.builder import build_dataset, conversations
from trainer.data.collator import Collator
from trainer.data.errors import BadRow, DataError
from trainer.data.preference import build_preference
from trainer.data.stats import DataStats

__all__ = ["BadRow", "Collator", "DataError", "DataStats", "build_dataset", "build_preference", "conversations"]
