"""Trained tokens per second: kubetune's trainer against TRL's SFTTrainer and against a ceiling, at equal settings.

    python bench/throughput.py                  # ~4 minutes on 2 CPU cores (3m38s while shared with a CI run)
    python bench/throughput.py --steps 6        # quicker, noisier
    python bench/throughput.py --ours-set training.loss=full --ours-set training.prefetch=0   # today's path

A trained token is a target of the loss: a position whose next-token label is not -100 (`labels[..., 1:]`).
Every run fine-tunes the same LoRA adapter (r 16, alpha 32, all linear layers) on the same tiny random Llama
(hidden 256, 4 layers, untied 32k head, built from a config and saved as a local `base_model`, loaded by
kubetune's own loader for every run) with a real tokenizer and chat template (`tests.resources`), on the same
generated single-turn chats of widely varying length, loss on the assistant turn only:

  trl-padded      TRL SFTTrainer, prompt/completion rows padded per batch (attention mask)
  trl-packing     TRL SFTTrainer, packing=True (bfd: padding-free, one flattened row per batch)
  ours            kubetune's trainer as `python -m trainer.train` runs it: `FineTune` (trainer/train/loop.py)
                  with its TrainStream, Collator, ResumableTrainer, loss (`training.loss`), prefetch
                  (`training.prefetch`), MLflow and progress callbacks; only a clock callback is added
  ceiling         the same model as `ours` (same object) on `ours`' pre-built batches: forward + our loss
                  (the trainer's `compute_loss`) + backward + clipping + the same optimizer's step; no Trainer
                  loop, no data loader, no callbacks. How close to the limit each run is.
  trl-padded (defaults) / trl-packing (defaults)
                  as TRL users run it (defaults): SFTConfig's own precision (bf16=True: emulated on a CPU
                  without native bf16) and gradient_checkpointing=True. Shown for reference; no ratio is
                  taken against them, and the targets are against the equal-settings runs.

Every run's settings are read back from the trainer once training has begun (the optimizer the Trainer built,
the model's checkpointing state, the autocast the arguments select ...) and printed as one table. Runs are
compared only when their settings are equal except for what is under test (the trainer, the data pipeline and
the loss): `compare` refuses otherwise, and the bench stops.

Step time is the time between the ends of consecutive optimizer steps after the warm-up (so it includes
fetching and collating the batch); tokens/s is trained tokens over the summed step times.
"""

from __future__ import annotations

import argparse
import atexit
import json
import math
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# What may differ between compared runs: the one thing a throughput bench tests (the training pipeline).
UNDER_TEST = frozenset({"trainer", "data pipeline", "loss"})
SETTINGS = ("precision", "gradient checkpointing", "optimizer", "schedule", "grad clipping", "batch",
            "sequence budget", "attention", "model", "adapter", "logging", "threads")
TARGETS = (("trl-padded", 3.0), ("trl-packing", 2.0))  # ours >= N x this run, at equal settings
CEILING_TARGET = 0.70  # ours >= this fraction of the ceiling's trained tokens/s
WORDS = ["the", "model", "learns", "to", "answer", "questions", "about", "kubernetes", "clusters", "gpus", "nodes",
         "pods", "jobs", "data", "sets", "tokens", "adapters", "weights", "gradients", "batches", "steps", "loss",
         "rate", "memory", "storage", "network", "latency"]


class IncomparableRuns(ValueError):
    """Two runs whose settings differ beyond what the bench tests: a ratio between them would mislead."""


def differing(a: Mapping[str, str], b: Mapping[str, str], under_test: Collection[str] = UNDER_TEST) -> list[str]:
    """The settings (other than `under_test`) in which `a` and `b` differ, or that only one of them has."""
    keys = (set(a) | set(b)) - set(under_test)
    return sorted(k for k in keys if a.get(k) != b.get(k))


def check_comparable(runs: Mapping[str, Mapping[str, str]], under_test: Collection[str] = UNDER_TEST) -> None:
    """Raise IncomparableRuns naming every setting in which any run differs from the first one."""
    names = list(runs)
    problems = []
    for name in names[1:]:
        for key in differing(runs[names[0]], runs[name], under_test):
            problems.append(f"{key}: {names[0]} has {runs[names[0]].get(key, '(unset)')!r}, "
                            f"{name} has {runs[name].get(key, '(unset)')!r}")
    if problems:
        raise IncomparableRuns("refusing to compare runs whose settings differ beyond "
                               f"{', '.join(sorted(under_test))}: " + "; ".join(problems))


@dataclass
class Run:
    name: str
    settings: dict[str, str] = field(default_factory=dict)
    step_times: list[float] = field(default_factory=list)  # measured steps only (after the warm-up)
    trained: int = 0  # trained tokens in the measured steps
    real: int = 0  # non-padding tokens in the measured steps
    slots: int = 0  # token slots (padding included) in the measured steps
    prep_seconds: float = 0.0
    reference: bool = False  # "as users run it": shown, never compared

    @property
    def trained_per_s(self) -> float:
        return self.trained / sum(self.step_times)

    def step_stats(self) -> tuple[float, float, float]:
        """Median, mean and 95th percentile (nearest rank) of the step time."""
        t = sorted(self.step_times)
        p95 = t[min(len(t) - 1, math.ceil(0.95 * len(t)) - 1)]
        return statistics.median(t), statistics.fmean(t), p95


def compare(run: Run, base: Run) -> float:
    """`run`'s trained tokens/s over `base`'s; refused (IncomparableRuns) unless their settings are equal."""
    check_comparable({run.name: run.settings, base.name: base.settings})
    return run.trained_per_s / base.trained_per_s


# -- data and model ------------------------------------------------------------------------------------------------
def make_rows(n: int, seed: int) -> list[dict[str, Any]]:
    """Single-turn chats; prompt and answer lengths log-normal (many short, a long tail)."""
    rng = random.Random(seed)

    def text(median: float, cap: int) -> str:
        k = max(1, min(cap, int(rng.lognormvariate(math.log(median), 0.9))))
        return " ".join(rng.choices(WORDS, k=k)).capitalize() + "."

    return [{"messages": [{"role": "user", "content": text(30, 120)}, {"role": "assistant", "content": text(45, 180)}]}
            for _ in range(n)]


def save_tiny_llama(tok: Any, seed: int, out: Path) -> Path:
    """A random Llama (hidden 256, 4 layers, untied head) and its tokenizer, saved as a local base model."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=1024, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=False,
    )  # fmt: skip
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def bench_spec(a: argparse.Namespace, model_dir: Path, train: Path, out: Path) -> Any:
    """The job spec of the `ours` run; every other run takes its settings from it."""
    from trainer.spec.io import spec_from_dict

    raw = {
        "name": "bench-ours", "base_model": str(model_dir),
        "model": {"dtype": "float32", "attn_implementation": "sdpa"},
        "adapter": {"method": "lora", "r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"train": str(train), "max_seq_len": a.max_seq_len, "packing": True, "train_on": "completions",
                 "bad_rows": {"max_bad_fraction": 0.05}, "too_long": "truncate"},  # as TRL's max_length
        "training": {"max_steps": a.steps, "learning_rate": 1e-4, "lr_scheduler": "constant", "warmup_ratio": 0.0,
                     "per_device_batch_size": a.batch, "grad_accum": 1, "seed": a.seed, "logging_steps": 1},
        "resources": {"gpu": "none"}, "output": {"uri": str(out)}, "eval": {"num_samples": 0},
    }  # fmt: skip
    return spec_from_dict(raw, "bench", a.ours_set)


# -- what each run measures ----------------------------------------------------------------------------------------
def trained_in(batch: Mapping[str, Any]) -> int:
    labels = batch["shift_labels"] if "shift_labels" in batch else batch["labels"][..., 1:]
    return int((labels != -100).sum())


class Counting:
    """Wraps a collator; records (trained, real, slots) per batch in the order batches are made, and keeps the
    batches when `keep` (the ceiling trains on them)."""

    def __init__(self, collate: Callable[[Any], dict[str, Any]], keep: bool = False):
        self.collate, self.keep = collate, keep
        self.batches: list[tuple[int, int, int]] = []
        self.kept: list[dict[str, Any]] = []

    def __call__(self, features: Any) -> dict[str, Any]:
        b = self.collate(features)
        real = sum(len(f["input_ids"]) for f in features)
        self.batches.append((trained_in(b), real, b["input_ids"].numel()))
        if self.keep:
            self.kept.append({k: v.clone() if hasattr(v, "clone") else v for k, v in b.items()})
        return b


def read_settings(args: Any, model: Any, optimizer: Any, max_seq_len: int, attention: str) -> dict[str, str]:
    """The settings a run actually trains with, read from the objects doing it."""
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    frozen = {str(p.dtype).removeprefix("torch.") for p in model.parameters() if not p.requires_grad}
    trainable = [p for p in model.parameters() if p.requires_grad]
    autocast = "bf16 autocast" if args.bf16 else "fp16 autocast" if args.fp16 else "no autocast"
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps the real one
    d, groups = inner.defaults, inner.param_groups
    opt = ", ".join([f"lr={sorted({g.get('initial_lr', g['lr']) for g in groups})}",
                     f"weight_decay={sorted({g['weight_decay'] for g in groups})}"]
                    + [f"{k}={d[k]}" for k in ("betas", "eps", "amsgrad", "fused", "foreach") if k in d])
    lora = model.peft_config["default"] if hasattr(model, "peft_config") else None
    return {
        "precision": f"base {'/'.join(sorted(frozen))}, adapter {trainable[0].dtype}".replace("torch.", "")
        + f", {autocast}",
        "gradient checkpointing": "on" if base.is_activation_checkpointing else "off",
        "optimizer": f"{type(inner).__name__}({opt})",
        "schedule": f"{getattr(args.lr_scheduler_type, 'value', args.lr_scheduler_type)}, warm-up {args.warmup_steps}",
        "grad clipping": f"{args.max_grad_norm}",
        "batch": f"{args.per_device_train_batch_size} rows x {args.gradient_accumulation_steps} accum "
        f"x {args.world_size} rank(s)",
        "sequence budget": f"{max_seq_len} tokens per row",
        "attention": attention,
        "model": f"{type(base).__name__}, {sum(p.numel() for p in base.parameters()) / 1e6:.2f}M params",
        "adapter": "none" if lora is None else f"lora r{lora.r} alpha{lora.lora_alpha} dropout{lora.lora_dropout} "
        f"on {','.join(sorted(lora.target_modules))}; {sum(p.numel() for p in trainable)} trainable",
        "logging": f"every {args.logging_steps} step(s)",
        "threads": str(torch.get_num_threads()),
    }


def clock(run: Run, settings: Callable[[Any, Any, Any], dict[str, str]], steps: int, warmup: int) -> Any:
    """A callback that reads the run's settings when training begins and times every optimizer step."""
    from transformers import TrainerCallback

    marks: list[float] = []

    class Clock(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            run.settings.update(settings(args, kw["model"], kw["optimizer"]))

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            marks.append(time.perf_counter())
            if len(marks) == steps:
                run.step_times = [b - a for a, b in zip(marks[warmup - 1 :], marks[warmup:], strict=False)]

    return Clock()


def account(run: Run, counting: Counting, steps: int, warmup: int) -> None:
    """Batch i feeds step i (grad_accum 1); the collator may have made more ahead (prefetch)."""
    if len(counting.batches) < steps or len(run.step_times) != steps - warmup:
        raise RuntimeError(f"{run.name}: {len(counting.batches)} batches seen and {len(run.step_times)} steps timed; "
                           f"expected at least {steps} and {steps - warmup} (are batches made in another process?)")
    measured = counting.batches[warmup:steps]
    run.trained, run.real, run.slots = (sum(b[i] for b in measured) for i in range(3))


# -- the runs ------------------------------------------------------------------------------------------------------
def run_trl(name: str, a: argparse.Namespace, ctx: dict[str, Any], equal: bool) -> Run:
    """TRL's SFTTrainer on the prompt/completion rows, at our settings (`equal`) or at SFTConfig's defaults for
    precision and gradient checkpointing (everything else as ours)."""
    from trl import SFTConfig, SFTTrainer

    from trainer.model import load as models

    spec, ours = ctx["spec"], ctx["ours_args"]
    run = Run(name, reference=not equal)
    t0 = time.perf_counter()
    kw: dict[str, Any] = {"bf16": False, "gradient_checkpointing": False} if equal else {}
    args = SFTConfig(
        output_dir=str(ctx["tmp"] / name), max_steps=a.steps, per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=1, learning_rate=ours.learning_rate, lr_scheduler_type=ours.lr_scheduler_type,
        warmup_steps=ours.warmup_steps, weight_decay=ours.weight_decay, max_grad_norm=ours.max_grad_norm,
        optim=ours.optim, seed=a.seed, data_seed=a.seed, logging_steps=ours.logging_steps, report_to=[],
        save_strategy="no", use_cpu=True, dataloader_num_workers=0, disable_tqdm=True, max_length=a.max_seq_len,
        packing="packing" in name, **kw,
    )  # fmt: skip
    base = models.load_base_model(ctx["ref"], spec)
    trainer = SFTTrainer(model=base, args=args, train_dataset=ctx["prompt_completion"], processing_class=ctx["tok"],
                         peft_config=models.lora_config(spec))
    run.prep_seconds = time.perf_counter() - t0
    counting = Counting(trainer.data_collator)
    trainer.data_collator = counting
    layout = "bfd packing, padding-free (one flattened row)" if args.packing else "one sample per row, padded per batch"
    extra = {"trainer": f"trl {ctx['trl_version']} SFTTrainer", "data pipeline": f"datasets.map + {layout}",
             "loss": f"SFTTrainer.compute_loss (model logits everywhere, loss_type {args.loss_type})"}
    trainer.add_callback(clock(run, lambda ar, m, o: read_settings(ar, m, o, a.max_seq_len, ctx["attention"]) | extra,
                               a.steps, a.warmup))
    trainer.train()
    account(run, counting, a.steps, a.warmup)
    return run


def run_ours(a: argparse.Namespace, ctx: dict[str, Any]) -> tuple[Run, Any, Counting]:
    """kubetune's trainer end to end (`FineTune`: setup, data, model, train), with a clock and a batch counter."""
    from trainer.train.loop import FineTune

    spec = ctx["spec"]
    run = Run("ours")
    hooks: dict[str, Any] = {}
    extra = {"trainer": "kubetune FineTune -> ResumableTrainer (trainer/train)",
             "data pipeline": f"TrainStream + Collator (best-fit packed rows), training.prefetch={spec.training.prefetch}",
             "loss": f"training.loss={spec.training.loss} (trainer/train/loss.py)"}

    class Benched(FineTune):
        def _make_trainer(self, tracker: Any) -> Any:
            trainer = super()._make_trainer(tracker)
            hooks["counting"] = trainer.data_collator = Counting(trainer.data_collator, keep=True)
            trainer.add_callback(clock(run, lambda ar, m, o: read_settings(ar, m, o, spec.data.max_seq_len,
                                                                           ctx["attention"]) | extra, a.steps, a.warmup))
            hooks["trainer"] = trainer
            return trainer

    t0 = time.perf_counter()
    job = Benched(spec, ctx["tmp"])
    job.setup()
    job.load_data()
    job.load_model()
    run.prep_seconds = time.perf_counter() - t0
    job.train()
    assert job.tracker is not None
    job.tracker.end("FINISHED", timeout=30)
    job.cleanup(True)
    account(run, hooks["counting"], a.steps, a.warmup)
    ctx["ours_stats"] = job.train_stats
    return run, hooks["trainer"], hooks["counting"]


def run_ceiling(a: argparse.Namespace, ctx: dict[str, Any], trainer: Any, counting: Counting, ours: Run) -> Run:
    """`ours`' model on `ours`' batches: forward + loss + backward + clip + optimizer step, timed per step."""
    import torch
    from transformers import Trainer

    model, args = trainer.model, trainer.args
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    trainable = [p for p in model.parameters() if p.requires_grad]  # LoRA weights: all decay, as the Trainer's groups
    optimizer = cls([{"params": trainable, "weight_decay": args.weight_decay}], **kwargs)
    run = Run("ceiling")
    run.settings = read_settings(args, model, optimizer, ctx["spec"].data.max_seq_len, ctx["attention"]) | {
        "trainer": "none: a plain loop calling the trainer's compute_loss", "loss": ours.settings["loss"],
        "data pipeline": "none: ours' batches, pre-built in memory"}
    batches = counting.kept[: a.steps]
    model.train()
    marks = [time.perf_counter()]
    for batch in batches:
        inputs = {k: (v.to(args.device) if hasattr(v, "to") else v) for k, v in batch.items()}
        with trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(model, inputs, num_items_in_batch=torch.tensor(trained_in(batch)))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
    run.step_times = [b - m for m, b in zip(marks[a.warmup : -1], marks[a.warmup + 1 :], strict=True)]
    run.trained, run.real, run.slots = (sum(b[i] for b in counting.batches[a.warmup : a.steps]) for i in range(3))
    return run


# -- report --------------------------------------------------------------------------------------------------------
def settings_table(runs: list[Run]) -> str:
    """Each setting once: one value for all runs, or each distinct value with the runs that have it."""
    lines = ["settings (read back from each run once training began):"]
    for key in (*SETTINGS, *sorted(UNDER_TEST)):
        values: dict[str, list[str]] = {}
        for r in runs:
            values.setdefault(r.settings.get(key, "(unset)"), []).append(r.name)
        tag = "  [under test]" if key in UNDER_TEST else ""
        if len(values) == 1:
            lines.append(f"  {key:<23}{next(iter(values))}   (all runs){tag}")
            continue
        for i, (value, names) in enumerate(values.items()):
            lines.append(f"  {key if i == 0 else '':<23}{value}   ({', '.join(names)}){tag if i == 0 else ''}")
    return "\n".join(lines)


def ratio_cell(run: Run, base: Run | None) -> str:
    if base is None:
        return "-"
    if run is base:
        return "1.00x"
    try:
        return f"{compare(run, base):.2f}x"
    except IncomparableRuns:
        return "refused*"


def results_table(runs: list[Run]) -> str:
    by = {r.name: r for r in runs}
    head = (f"{'run':<24}{'step median':>12}{'mean':>8}{'p95':>8}{'trained tok/s':>15}{'real tok/s':>12}"
            f"{'slot fill':>10}{'prep s':>8}{'vs trl-padded':>15}{'vs trl-packing':>16}{'vs ceiling':>12}")
    lines = [head]
    for r in runs:
        med, mean, p95 = r.step_stats()
        cells = [ratio_cell(r, by.get(b)) for b in ("trl-padded", "trl-packing", "ceiling")]
        lines.append(f"{r.name:<24}{med:>11.3f}s{mean:>7.3f}s{p95:>7.3f}s{r.trained_per_s:>15.1f}"
                     f"{r.real / sum(r.step_times):>12.1f}{r.real / r.slots:>10.1%}{r.prep_seconds:>8.1f}"
                     f"{cells[0]:>15}{cells[1]:>16}{cells[2]:>12}")
    for r in runs:
        if r.reference and "ours" in by:
            lines.append(f"* {r.name}: as TRL users run it (defaults); not compared, it differs from ours in "
                         f"{', '.join(differing(r.settings, by['ours'].settings))}")
    return "\n".join(lines)


def targets(runs: list[Run]) -> list[str]:
    by = {r.name: r for r in runs}
    if "ours" not in by:
        return []
    out = []
    for base, target in TARGETS:
        if base in by:
            x = compare(by["ours"], by[base])
            out.append(f"target ours >= {target:.1f}x {base} (equal settings): {x:.2f}x {'met' if x >= target else 'NOT met'}")
    if "ceiling" in by:
        x = compare(by["ours"], by["ceiling"])
        out.append(f"target ours >= {CEILING_TARGET:.0%} of the ceiling: {x:.0%} {'met' if x >= CEILING_TARGET else 'NOT met'}")
        faster = [r.name for r in runs if not r.reference and r.trained_per_s > 1.05 * by["ceiling"].trained_per_s]
        if faster:
            out.append(f"warning: {', '.join(faster)} ran faster than the ceiling, which does the same work with less "
                       "around it: the machine's load changed during the bench; these ratios are not reliable")
    return out


# -- main ----------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="phi3", help="tokenizer + chat template from tests.resources (default phi3: 32k vocab)")
    p.add_argument("--rows", type=int, default=600)
    p.add_argument("--max-seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads, every run")
    p.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE",
                   help="spec override for the `ours` run, e.g. training.loss=full (repeatable)")
    p.add_argument("--skip", nargs="*", default=[], help="runs to leave out: trl-padded trl-packing trl-defaults")
    p.add_argument("--verbose", action="store_true", help="show the trainer's own output")
    a = p.parse_args(argv)
    if not 1 <= a.warmup < a.steps:
        p.error("--warmup must be at least 1 and below --steps")
    return a


def context(a: argparse.Namespace) -> dict[str, Any]:
    """Rows, tokenizer, the saved model, the `ours` spec and the settings every run takes from it."""
    import datasets
    import trl

    from tests.resources import tokenizer_for
    from trainer.model import load as models
    from trainer.train.arguments import training_arguments

    tmp = Path(tempfile.mkdtemp(prefix="kubetune-bench-"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    tok = tokenizer_for(a.family)
    rows = make_rows(a.rows, a.seed)
    train = tmp / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = bench_spec(a, save_tiny_llama(tok, a.seed, tmp / "model"), train, tmp / "out")
    ref = models.resolve_base_model(spec.base_model)
    return {
        "tmp": tmp, "tok": tok, "spec": spec, "ref": ref, "trl_version": trl.__version__,
        "attention": models.load_plan(ref, spec).attn_implementation,
        "ours_args": training_arguments(spec, tmp / "args", "bench", True),
        "prompt_completion": datasets.Dataset.from_list(
            [{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in rows]),
    }  # fmt: skip


def quiet(verbose: bool) -> Any:
    import contextlib
    import io

    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    import datasets
    import torch
    import transformers

    torch.set_num_threads(a.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(a.threads))  # FineTune.setup keeps the threads set here
    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    ctx = context(a)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {ctx['trl_version']}, "
          f"{a.threads} threads; tokenizer {a.family}, {a.rows} rows, max_seq_len {a.max_seq_len}, batch {a.batch}, "
          f"{a.steps} steps ({a.warmup} warm-up, not timed)", flush=True)
    runs: list[Run] = []
    for name in ("trl-padded", "trl-packing"):
        if name not in a.skip:
            with quiet(a.verbose):
                runs.append(run_trl(name, a, ctx, equal=True))
    with quiet(a.verbose):
        ours, trainer, counting = run_ours(a, ctx)
        runs += [ours, run_ceiling(a, ctx, trainer, counting, ours)]
    if "trl-defaults" not in a.skip:
        for name in ("trl-padded (defaults)", "trl-packing (defaults)"):
            with quiet(a.verbose):
                runs.append(run_trl(name, a, ctx, equal=False))
    print("\n" + settings_table(runs))
    try:
        check_comparable({r.name: r.settings for r in runs if not r.reference})
    except IncomparableRuns as e:
        print(f"\n{e}", file=sys.stderr)
        return 2
    print(f"\n{results_table(runs)}")
    print(f"\nours: {ctx['ours_stats'].report()}")
    for line in targets(runs):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
