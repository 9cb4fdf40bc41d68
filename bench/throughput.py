"""Trained tokens per second: kubetune's data pipeline against TRL's SFTTrainer, same model, same data.

    python bench/throughput.py                 # ~3-4 minutes on 2 CPU cores
    python bench/throughput.py --steps 5       # quicker, noisier
    python bench/throughput.py --ours-in-trl   # adds a fourth run (~1 minute)

A trained token is a target of the loss: a non-padding position whose next-token label is not
-100 (`labels[..., 1:] != -100`, what the causal-LM loss shifts to). Every run trains the same
tiny random Llama (hidden 256, 4 layers, sdpa, float32, built from a config) with a real
tokenizer and chat template (`tests.resources`), on the same generated single-turn chat rows of
widely varying length (600 by default: with a few hundred, the one or two partly filled last
rows alone keep best-fit packing just under 99%), loss on the assistant turn only, batch 4, AdamW:

  trl-padded    TRL SFTTrainer, prompt/completion rows, default padding (per batch, attention mask)
  trl-packing   TRL SFTTrainer, packing=True (packing_strategy "bfd", so padding-free: the batch
                is one flattened row with restarting position ids)
  ours          build_dataset + Collator (best-fit packed rows, [batch, max_seq_len], position ids
                restarting per sample) under plain transformers.Trainer: full logits everywhere
  ours-in-trl   (with --ours-in-trl) the same rows and collator under TRL's SFTTrainer with
                `skip_prepare_dataset`: the same trainer, loss and fused LM head (logits only where a
                label exists) as the TRL runs, so only the data layout differs

Throughput is measured from the end of the warm-up steps to the end of the last step, so it
includes fetching and collating batches but not the one-off dataset preparation (printed too).
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ["the", "model", "learns", "to", "answer", "questions", "about", "kubernetes", "clusters", "gpus", "nodes", "pods", "jobs", "data", "sets", "tokens", "adapters", "weights", "gradients", "batches", "steps", "loss", "rate", "memory", "storage", "network", "latency"]


def make_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Single-turn chats; prompt and answer lengths log-normal (many short, a long tail)."""
    rng = random.Random(seed)

    def text(median: float, cap: int) -> str:
        k = max(1, min(cap, int(rng.lognormvariate(math.log(median), 0.9))))
        return " ".join(rng.choices(WORDS, k=k)).capitalize() + "."

    return [
        {"messages": [{"role": "user", "content": text(30, 120)}, {"role": "assistant", "content": text(45, 180)}]}
        for _ in range(n)
    ]


def tiny_llama(tok: Any, seed: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    return LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)


class Counting:
    """Wraps a collator; records (trained, real, slots) per batch in call order."""

    def __init__(self, collate: Callable[[Any], dict[str, Any]]):
        self.collate = collate
        self.batches: list[tuple[int, int, int]] = []

    def __call__(self, features: Any) -> dict[str, Any]:
        b = self.collate(features)
        labels = b["labels"]
        trained = int((labels[..., 1:] != -100).sum())
        self.batches.append((trained, int(b.pop("_real")), labels.numel()))
        return b


def real_tokens_counter(collate: Callable[[Any], dict[str, Any]]) -> Callable[[Any], dict[str, Any]]:
    """Count the features' own (real, non-padding) tokens, whatever the layout the collator makes."""

    def wrapped(features: Any) -> dict[str, Any]:
        b = collate(features)
        b["_real"] = sum(len(f["input_ids"]) for f in features)
        return b

    return wrapped


@dataclass
class Result:
    name: str
    trained: int
    real: int
    slots: int
    seconds: float
    prep_seconds: float

    @property
    def trained_per_s(self) -> float:
        return self.trained / self.seconds


def timed_train(trainer: Any, counting: Counting, steps: int, warmup: int, name: str, prep: float) -> Result:
    from transformers import TrainerCallback

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            marks.append(time.perf_counter())

    trainer.add_callback(Clock())
    trainer.train()
    assert len(marks) == steps, f"{name}: {len(marks)} steps, expected {steps}"
    measured = counting.batches[warmup:steps]  # batch i feeds step i (grad_accum 1, num_workers 0)
    return Result(
        name,
        trained=sum(b[0] for b in measured),
        real=sum(b[1] for b in measured),
        slots=sum(b[2] for b in measured),
        seconds=marks[-1] - marks[warmup - 1],
        prep_seconds=prep,
    )


def common_args(out: str, steps: int, batch: int, seed: int) -> dict[str, Any]:
    return {
        "output_dir": out, "max_steps": steps, "per_device_train_batch_size": batch, "learning_rate": 1e-4,
        "lr_scheduler_type": "constant", "report_to": [], "save_strategy": "no", "logging_strategy": "no",
        "use_cpu": True, "seed": seed, "data_seed": seed, "dataloader_num_workers": 0, "disable_tqdm": True,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="phi3", help="tokenizer + chat template from tests.resources (default phi3: 32k vocab)")
    p.add_argument("--rows", type=int, default=600)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip", nargs="*", default=[], help="runs to leave out")
    p.add_argument("--ours-in-trl", action="store_true", help="also run our rows under TRL's SFTTrainer")
    a = p.parse_args()

    import datasets
    import torch
    import transformers
    import trl
    from transformers import Trainer, TrainingArguments
    from trl import SFTConfig, SFTTrainer

    from tests.resources import tokenizer_for
    from trainer.data import Collator, build_dataset
    from trainer.spec.job import JobSpec

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    tok = tokenizer_for(a.family)
    rows = make_rows(a.rows, a.seed)
    tmp = Path(tempfile.mkdtemp(prefix="kubetune-bench-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    train = tmp / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prompt_completion = datasets.Dataset.from_list(
        [{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in rows]
    )
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
        f"{torch.get_num_threads()} threads; tokenizer {a.family}, {a.rows} rows, max_seq_len {a.max_seq_len}, "
        f"batch {a.batch}, {a.steps} steps ({a.warmup} warm-up)"
    )
    results: list[Result] = []

    def trl_run(name: str, **cfg: Any) -> None:
        if name in a.skip:
            return
        t0 = time.perf_counter()
        args = SFTConfig(**common_args(str(tmp / name), a.steps, a.batch, a.seed), max_length=a.max_seq_len, **cfg)
        trainer = SFTTrainer(model=tiny_llama(tok, a.seed), args=args, train_dataset=prompt_completion, processing_class=tok)
        prep = time.perf_counter() - t0
        counting = Counting(real_tokens_counter(trainer.data_collator))
        trainer.data_collator = counting
        results.append(timed_train(trainer, counting, a.steps, a.warmup, name, prep))

    trl_run("trl-padded", packing=False)
    trl_run("trl-packing", packing=True)

    spec = JobSpec.model_validate(
        {"name": "bench", "base_model": "tiny", "data": {"train": str(train), "max_seq_len": a.max_seq_len,
         "packing": True, "train_on": "completions", "bad_rows": {"max_bad_fraction": 0.05}}}
    )  # fmt: skip
    t0 = time.perf_counter()
    items, stats = build_dataset(spec, tok)
    prep = time.perf_counter() - t0
    if "ours" not in a.skip:
        counting = Counting(real_tokens_counter(Collator(tok, packing=True)))
        args = TrainingArguments(**common_args(str(tmp / "ours"), a.steps, a.batch, a.seed), remove_unused_columns=False)
        trainer = Trainer(model=tiny_llama(tok, a.seed), args=args, train_dataset=items, data_collator=counting)
        results.append(timed_train(trainer, counting, a.steps, a.warmup, "ours", prep))
    if a.ours_in_trl:
        counting = Counting(real_tokens_counter(Collator(tok, packing=True)))
        args = SFTConfig(
            **common_args(str(tmp / "ours-in-trl"), a.steps, a.batch, a.seed),
            max_length=a.max_seq_len,
            dataset_kwargs={"skip_prepare_dataset": True},
            remove_unused_columns=False,
        )
        ds = datasets.Dataset.from_list(items)
        trainer = SFTTrainer(model=tiny_llama(tok, a.seed), args=args, train_dataset=ds, processing_class=tok, data_collator=counting)
        results.append(timed_train(trainer, counting, a.steps, a.warmup, "ours-in-trl", prep))

    print(f"\nours: {stats.report()}")
    by = {r.name: r for r in results}
    print(f"\n{'run':<14}{'trained tok/s':>14}{'real tok/s':>12}{'slot fill':>11}{'prep s':>9}"
          f"{'vs trl-padded':>15}{'vs trl-packing':>16}")  # fmt: skip
    for r in results:
        ratios = [
            f"{r.trained_per_s / by[b].trained_per_s:.2f}x" if b in by else "-" for b in ("trl-padded", "trl-packing")
        ]
        print(
            f"{r.name:<14}{r.trained_per_s:>14.1f}{r.real / r.seconds:>12.1f}{r.real / r.slots:>11.1%}"
            f"{r.prep_seconds:>9.1f}{ratios[0]:>15}{ratios[1]:>16}"
        )
    print(f"\nour packing efficiency (real tokens / (rows x max_seq_len)): {stats.packing_efficiency:.2%}")
    if "ours" in by:
        for base, target in (("trl-padded", 2.0), ("trl-packing", 1.0)):
            if base in by:
                ratio = by["ours"].trained_per_s / by[base].trained_per_s
                print(f"target ours >= {target:.1f}x {base}: {ratio:.2f}x {'met' if ratio >= target else 'NOT met'}")
    print(f"target packing efficiency >= 99%: {'met' if stats.packing_efficiency >= 0.99 else 'NOT met'}")


if __name__ == "__main__":
    main()
