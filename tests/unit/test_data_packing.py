"""Best-fit packing, the collator's layouts, and the proof that packed samples stay apart."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from tests.resources import tokenizer_for
from trainer.data import Collator, build_dataset
from trainer.data.packing import best_fit_decreasing, efficiency, pack
from trainer.data.render import IGNORE, Sample
from trainer.spec.job import JobSpec


def test_best_fit_decreasing_small_case() -> None:
    # 6 and 4 fill one bin; 5, 3, 2 the other: the optimum, two full bins
    assert sorted(map(sorted, best_fit_decreasing([6, 5, 4, 3, 2], 10))) == [[0, 2], [1, 3, 4]]


def test_best_fit_picks_the_tightest_bin() -> None:
    # after 7 and 5 (rooms 3 and 5), the 3 goes into the bin with room 3, leaving the 5-room bin for the 5
    assert sorted(map(sorted, best_fit_decreasing([7, 5, 5, 3], 10))) == [[0, 3], [1, 2]]


def test_best_fit_decreasing_random_is_valid_and_tight() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(1, 512) for _ in range(3000)]
    bins = best_fit_decreasing(lengths, 1024)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 1024 for b in bins)
    lower_bound = -(-sum(lengths) // 1024)
    assert len(bins) <= lower_bound * 1.01 + 1


def test_best_fit_rejects_impossible_lengths() -> None:
    with pytest.raises(ValueError):
        best_fit_decreasing([5, 11], 10)


def test_pack_rows_and_efficiency() -> None:
    samples = [Sample([1] * n, [IGNORE] + [1] * (n - 1)) for n in (6, 5, 4, 3, 2)]
    rows = pack(samples, 10)
    assert sorted(len(r["input_ids"]) for r in rows) == [10, 10]
    six_four = next(r for r in rows if r["position_ids"][:6] == list(range(6)))
    assert six_four["position_ids"] == [*range(6), *range(4)]
    assert efficiency(20, 2, 10) == 1.0
    assert efficiency(15, 2, 10) == 0.75
    assert efficiency(0, 0, 10) == 0.0


def items() -> list[dict[str, list[int]]]:
    return [
        {"input_ids": [5, 6, 7, 8, 9], "labels": [IGNORE, IGNORE, 7, 8, 9], "position_ids": [0, 1, 2, 0, 1]},
        {"input_ids": [3, 4], "labels": [IGNORE, 4], "position_ids": [0, 1]},
    ]


def test_collator_packed_layout() -> None:
    tok = tokenizer_for("qwen2")
    collate = Collator(tok, packing=True)
    b = collate(items())
    assert "attention_mask" not in b and b["use_cache"] is False
    pad = tok.pad_token_id
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9], [3, 4, pad, pad, pad]]
    assert b["labels"].tolist() == [[IGNORE, IGNORE, 7, 8, 9], [IGNORE, 4, IGNORE, IGNORE, IGNORE]]
    # padding restarts at 0: its own segment, never a continuation of the real sample
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 0, 1, 2]]
    assert collate.efficiency == 7 / 10


def test_collator_unpacked_has_attention_mask_and_multiple_of() -> None:
    tok = tokenizer_for("llama3")
    collate = Collator(tok, packing=False, pad_to_multiple_of=4)
    b = collate([{"input_ids": [1, 2, 3], "labels": [IGNORE, 2, 3], "position_ids": [0, 1, 2]}])
    assert b["input_ids"].shape == (1, 4)
    assert b["attention_mask"].tolist() == [[1, 1, 1, 0]]
    assert b["input_ids"][0, 3].item() == tok.pad_token_id  # llama3 gets EOS as pad in tests.resources
    assert collate.efficiency == 3 / 4


def test_collator_padding_free_flattens_the_batch() -> None:
    b = Collator(tokenizer_for("qwen2"), packing=True, padding_free=True)(items())
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9, 3, 4]]
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0, 1]]
    assert b["labels"].tolist() == [[IGNORE, IGNORE, 7, 8, 9, IGNORE, 4]]


# -- packed rows compute exactly what separate samples compute --------------------------------

WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu", "nu", "xi", "omicron", "pi", "rho"]


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[dict[str, list[int]]], Any]:
    rng = random.Random(1)
    path = tmp_path_factory.mktemp("pack") / "train.jsonl"
    with path.open("w") as f:
        for _ in range(9):
            q = " ".join(rng.choices(WORDS, k=rng.randint(1, 12)))
            a = " ".join(rng.choices(WORDS, k=rng.randint(1, 20)))
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
    spec = JobSpec.model_validate(
        {"name": "t", "base_model": "m", "data": {"train": str(path), "max_seq_len": 96, "packing": True}}
    )
    tok = tokenizer_for("phi3")  # the smallest real vocabulary (32k): fast logits
    rows, stats = build_dataset(spec, tok)
    assert stats.samples == 9 and stats.packed_rows < 9  # several samples share rows
    return tok, rows, stats


def tiny_llama(vocab: int, attn: str) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256,
    )  # fmt: skip
    return LlamaForCausalLM._from_config(cfg, attn_implementation=attn, dtype=torch.float32).eval()


def segments(position_ids: list[int]) -> list[tuple[int, int]]:
    starts = [i for i, p in enumerate(position_ids) if p == 0] + [len(position_ids)]
    return list(zip(starts, starts[1:], strict=False))


def assert_rows_match_separate_runs(model: Any, batch: dict[str, Any], real: list[int]) -> int:
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        checked = 0
        for r, n in enumerate(real):
            ids = batch["input_ids"][r, :n]
            for a, b in segments(batch["position_ids"][r, :n].tolist()):
                alone = model(input_ids=ids[a:b][None]).logits[0]
                torch.testing.assert_close(logits[r, a:b], alone, atol=1e-5, rtol=1e-5)
                checked += 1
    return checked


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_logits_equal_each_sample_alone(packed: tuple[Any, Any, Any], attn: str) -> None:
    tok, rows, _ = packed
    model = tiny_llama(len(tok), attn)
    batch = Collator(tok, packing=True)(rows)  # batch of several rows, the shorter ones padded
    real = [len(r["input_ids"]) for r in rows]
    assert len(set(real)) > 1, "the test needs padding in the batch"
    assert assert_rows_match_separate_runs(model, batch, real) == 9


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_logits_equal_each_sample_alone(packed: tuple[Any, Any, Any], attn: str) -> None:
    tok, rows, _ = packed
    batch = Collator(tok, packing=True, padding_free=True)(rows)
    assert batch["input_ids"].shape[0] == 1
    assert assert_rows_match_separate_runs(tiny_llama(len(tok), attn), batch, [batch["input_ids"].shape[1]]) == 9


def test_with_a_kv_cache_packed_samples_would_mix(packed: tuple[Any, Any, Any]) -> None:
    """Why the collator sends use_cache=False: with the config default, samples attend to each other."""
    tok, rows, _ = packed
    batch = Collator(tok, packing=True)(rows)
    del batch["use_cache"]
    with pytest.raises(AssertionError):
        assert_rows_match_separate_runs(tiny_llama(len(tok), "sdpa"), batch, [len(r["input_ids"]) for r in rows])


def test_dataset_stats_count_real_and_trained_tokens(packed: tuple[Any, Any, Any]) -> None:
    _, rows, stats = packed
    real = sum(len(r["input_ids"]) for r in rows)
    assert all(len(r["input_ids"]) <= 96 for r in rows)
    assert stats.tokens_total == real
    assert stats.tokens_trained == sum(1 for r in rows for lab in r["labels"] if lab != IGNORE)
    assert stats.packing_efficiency == pytest.approx(real / (len(rows) * 96))
    assert 0.5 < stats.packing_efficiency <= 1.0


def test_collator_for_spec_flattens_only_for_flash_attention() -> None:
    tok = tokenizer_for("qwen2")

    def make(attn: str, packing: bool) -> Collator:
        return Collator.for_spec(
            JobSpec.model_validate({"name": "t", "base_model": "m", "model": {"attn_implementation": attn},
                                    "data": {"train": "x.jsonl", "packing": packing}}), tok)  # fmt: skip

    assert make("flash_attention_2", True).padding_free
    assert not make("sdpa", True).padding_free and make("sdpa", True).packing
    assert not make("flash_attention_2", False).padding_free


def test_packed_loss_is_the_sum_of_the_samples_losses_alone() -> None:
    """`train_on: all` labels every token but a sample's first (trainer/data/render.py): packed, no sample's first
    token is a target of the sample before it, and the row's loss is the sum of its samples' losses alone."""
    from trainer.data.packing import row
    from trainer.train.loss import token_loss_sum

    g = torch.Generator().manual_seed(2)
    samples = [Sample(ids, [IGNORE, *ids[1:]]) for ids in (torch.randint(1, 200, (n,), generator=g).tolist()
                                                          for n in (9, 5, 7))]
    packed = row(samples)
    model = tiny_llama(256, "sdpa")
    with torch.no_grad():
        batch = Collator(SimpleNamespace(pad_token_id=0, eos_token_id=0), packing=True)([packed])
        total, count = token_loss_sum(model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                                            use_cache=False).logits, batch["labels"])
        alone = [token_loss_sum(model(input_ids=torch.tensor([s.input_ids])).logits, torch.tensor([s.labels]))
                 for s in samples]
    assert int(count) == sum(int(n) for _, n in alone) == 8 + 4 + 6
    torch.testing.assert_close(total, sum(s for s, _ in alone), atol=1e-4, rtol=1e-5)
