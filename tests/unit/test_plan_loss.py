"""The planner's logits + loss term per `training.loss` (launcher/plan/activations.py): `full` as before, `chunked`
(and `liger`, `cce`) one chunk of the trained positions, under every strategy (zero3 / fsdp gather the head's weight
for it: counted with the gathered parameters)."""

from __future__ import annotations

from launcher.plan import catalog
from launcher.plan.activations import logits, loss_chunk_rows
from launcher.plan.arch import from_hf_config
from launcher.plan.setup import Setup
from trainer.spec.io import spec_from_dict


def test_chunked_cuts_the_logits_of_the_h200_job_by_more_than_8x() -> None:
    arch = from_hf_config(catalog.lookup("Qwen/Qwen2-1.5B"), "qwen2-1.5b")
    full = Setup(batch=4, seq_len=2048, loss="full")
    assert logits(arch, full) == 4 * 2048 * arch.vocab_size * (2 + 4 + 4 + 4)  # unchanged
    for kind in ("chunked", "liger", "cce"):
        assert logits(arch, full.with_(loss=kind)) * 8 <= logits(arch, full)
    for strategy in ("zero3", "fsdp"):
        sharded = full.with_(loss="chunked", strategy=strategy, world_size=2)
        assert logits(arch, sharded) == logits(arch, full.with_(loss="chunked"))
        assert logits(arch, sharded) * 8 <= logits(arch, full.with_(strategy=strategy, world_size=2))


def test_a_chunk_is_never_more_rows_than_the_batch_has_tokens() -> None:
    arch = from_hf_config(catalog.lookup("google/gemma-3-270m"), "gemma-3-270m")
    assert loss_chunk_rows(arch.vocab_size) == 128
    tiny = Setup(batch=1, seq_len=16, loss="chunked", dtype="float32")
    assert logits(arch, tiny) == 16 * arch.vocab_size * 8 + 2 * 16 * arch.hidden_size * 4 + arch.vocab_size * 8


def test_the_spec_default_reaches_the_planner() -> None:
    spec = spec_from_dict({"name": "x", "base_model": "Qwen/Qwen2-1.5B", "data": {"train": "a.jsonl"}})
    assert Setup.from_spec(spec).loss == "chunked"
    spec = spec_from_dict({"name": "x", "base_model": "Qwen/Qwen2-1.5B", "data": {"train": "a.jsonl"},
                           "training": {"loss": "full"}})
    assert Setup.from_spec(spec).loss == "full"
