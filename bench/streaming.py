"""Peak memory of streaming training data: 10 MB against about 1 GB of chat rows from S3.

    python bench/streaming.py            # 10 MB and 1 GB (about 15 minutes on 2 CPU cores)
    python bench/streaming.py --quick    # 10 MB and 100 MB (about 2 minutes)
    python bench/streaming.py --prefetch 0,2   # step times of a tiny model, data in the loop vs made ahead

Generated multi-turn chat rows (`messages`, log-normal lengths) are written once to a moto S3
server this script starts on loopback (from a temporary folder; nothing is kept). Then, for each
size, a fresh child process streams one whole pass of `s3://bench/<size>/` through `TrainStream`
— read, format, render with the real Qwen2.5 chat template, tokenize, pack best-fit into rows of
`--max-seq-len` — and reports its peak resident memory (VmHWM: each child has its own
high-water mark) and its rows/s. The target: peak RSS at 1 GB / peak RSS at 10 MB <= 1.1.

A named baseline for both numbers: `build_dataset` (every sample in memory, one global best fit
over all of them, what training used before streaming) on the 10 MB data — its peak RSS shows
what materialising costs, and its packing efficiency is what the stream's bounded packing window
gives up (printed as `fill`).

`--prefetch 0,2` measures what the data pipeline costs the training step instead: for each value of
`training.prefetch`, a fresh child process trains a tiny Qwen2 model (real Qwen2.5 tokenizer and template)
through the real trainer (`trainer.train.loop.FineTune`) on local generated chats, packed into rows of
`--max-seq-len`, and prints the step time's median, mean, 95th percentile and maximum (the first
`WARMUP` steps left out). The model computes on one thread (`OMP_NUM_THREADS=1`): a stand-in for a
GPU, so that the data worker has a core of its own, as it has beside a GPU.

`--prefetch 0,2,4 --device-step 360` puts a GPU-like step in place of the model: the real loader the
trainer builds (`PrefetchLoader` over the stream, the position tags and the collator; batch 8, one
micro-batch per step) feeds a step of 360 ms of which a fifth is Python that holds the GIL (a CUDA
step's kernel launches) and the rest a wait that releases it (the device computing). This is the
H200 run of issue 16 (0.36 s median step at batch 8 of 2048-token packed rows) with the data pipeline
exactly as it runs there; what the step waits for data shows in its times.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ["the", "model", "learns", "to", "answer", "questions", "about", "kubernetes", "clusters", "gpus", "nodes",
         "pods", "jobs", "data", "sets", "tokens", "adapters", "weights", "gradients", "batches", "steps", "loss",
         "rate", "memory", "storage", "network", "latency", "stream", "shard", "rank", "window", "pack"]
MB = 2**20
SHARD = 128 * MB  # bytes per file: a large data set comes as several files


def rows(rng: random.Random) -> Any:
    """Endless chats of one to three turns; turn lengths log-normal (many short, a long tail)."""

    def text(median: float, cap: int) -> str:
        k = max(1, min(cap, int(rng.lognormvariate(math.log(median), 0.9))))
        return " ".join(rng.choices(WORDS, k=k)).capitalize() + "."

    while True:
        messages = []
        for _ in range(rng.choice((1, 1, 2, 3))):
            messages += [{"role": "user", "content": text(25, 200)}, {"role": "assistant", "content": text(60, 600)}]
        yield {"messages": messages}


def upload(client: Any, bucket: str, prefix: str, size: int, folder: Path, seed: int) -> int:
    """About `size` bytes of JSONL in files of at most SHARD bytes under s3://bucket/prefix/; returns rows."""
    gen, n, written, part = rows(random.Random(seed)), 0, 0, 0
    while written < size:
        path = folder / f"{prefix}-{part:03d}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            here = 0
            while here < min(SHARD, size - written):
                line = json.dumps(next(gen)) + "\n"
                f.write(line)
                here += len(line)
                n += 1
        client.upload_file(str(path), bucket, f"{prefix}/train-{part:03d}.jsonl")
        written += here
        path.unlink()
        part += 1
    return n


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def child(uri: str, mode: str, max_seq_len: int) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    from tests.resources import tokenizer_for
    from trainer.data import build_dataset
    from trainer.data.stream import TrainStream
    from trainer.spec.job import JobSpec

    tok = tokenizer_for("qwen2")
    spec = JobSpec.model_validate({"name": "bench", "base_model": "m", "training": {"max_steps": 1},
                                   "data": {"train": uri, "max_seq_len": max_seq_len, "too_long": "truncate"}})
    before = peak_rss_mb()
    started = time.perf_counter()
    if mode == "stream":
        stream = TrainStream(spec, tok, passes=1)
        for _ in stream:
            pass
        stats = stream.finish()
    else:
        _, stats = build_dataset(spec, tok)
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": stats.rows_read, "packed": stats.packed_rows, "tokens": stats.tokens_total,
                      "fill": stats.packing_efficiency, "seconds": seconds, "rss_start": before,
                      "rss_peak": peak_rss_mb()}))


WARMUP = 3  # first steps left out of the step-time statistics


def step_child(folder: Path, prefetch: int, steps: int, max_seq_len: int) -> None:
    """Train `steps` steps of a tiny model with `training.prefetch` = `prefetch`; prints the step times as one JSON line."""
    from transformers import TrainerCallback

    from tests.models import tiny_model
    from trainer.spec.io import spec_from_dict
    from trainer.train.loop import FineTune

    ends: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            ends.append(time.perf_counter())

    class Timed(FineTune):
        def _make_trainer(self, tracker: Any) -> Any:
            trainer = super()._make_trainer(tracker)
            trainer.add_callback(Clock())
            return trainer

    spec = spec_from_dict({
        "name": f"prefetch-{prefetch}", "base_model": str(tiny_model("qwen2")), "model": {"dtype": "float32"},
        "data": {"train": str(folder / "train.jsonl"), "max_seq_len": max_seq_len, "too_long": "truncate"},
        "training": {"max_steps": steps, "per_device_batch_size": 4, "logging_steps": steps, "save_steps": 10 * steps,
                     "prefetch": prefetch},
        "resources": {"gpu": "none"}, "eval": {"num_samples": 0}, "output": {"uri": str(folder / f"out-{prefetch}")}})
    job = Timed(spec, folder)
    job.setup()
    job.load_data()
    job.load_model()
    job.train()
    job.cleanup(True)
    times = [b - a for a, b in zip(ends, ends[1:], strict=False)][WARMUP:]
    print(json.dumps({"times": times}))


def step_times(prefetch: list[int], steps: int, max_seq_len: int) -> None:
    """One child per prefetch value over the same generated chats; a line of step-time statistics each."""
    import statistics

    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp:
        gen = rows(random.Random(0))
        (Path(tmp) / "train.jsonl").write_text("".join(json.dumps(next(gen)) + "\n" for _ in range(steps * 40)))
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "KUBETUNE_WORK_DIR": tmp}
        for n in prefetch:
            cmd = [sys.executable, __file__, "--step-child", tmp, "--prefetch", str(n), "--steps", str(steps),
                   "--max-seq-len", str(max_seq_len)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{(out.stdout + out.stderr)[-3000:]}")
            t = json.loads(out.stdout.strip().splitlines()[-1])["times"]
            median, mean = statistics.median(t), statistics.fmean(t)
            print(f"prefetch {n}: {len(t)} steps of 4 x {max_seq_len} tokens: median {median:.3f}s mean {mean:.3f}s "
                  f"(mean/median {mean / median:.2f}) p95 {statistics.quantiles(t, n=20)[18]:.3f}s max {max(t):.3f}s",
                  flush=True)


def python_work(iterations: int) -> int:
    n = 0
    for i in range(iterations):
        n += i & 7
    return n


def device_steps(prefetch: list[int], steps: int, max_seq_len: int, step_ms: float) -> None:
    """The trainer's loader (trainer/train/resume.py) feeding a stand-in GPU step; a statistics line per value."""
    import statistics

    import torch

    from tests.resources import tokenizer_for
    from trainer.data import Collator
    from trainer.data.prefetch import PrefetchLoader
    from trainer.data.stream import TrainStream
    from trainer.spec.job import JobSpec
    from trainer.train.datastate import Tagged, TaggedCollator

    tok, batch = tokenizer_for("qwen2"), 8
    started, calibrate = time.perf_counter(), 2_000_000
    python_work(calibrate)
    python_iterations = int(calibrate * (step_ms / 5 / 1000) / (time.perf_counter() - started))
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp:
        gen = rows(random.Random(0))
        (Path(tmp) / "train.jsonl").write_text("".join(json.dumps(next(gen)) + "\n" for _ in range(steps * 80)))
        spec = JobSpec.model_validate({"name": "bench", "base_model": "m", "training": {"max_steps": 1},
                                       "data": {"train": f"{tmp}/train.jsonl", "max_seq_len": max_seq_len,
                                                "too_long": "truncate"}})
        for n in prefetch:
            loader = PrefetchLoader(Tagged(TrainStream(spec, tok), batch), batch_size=batch, depth=n,
                                    collate_fn=TaggedCollator(Collator.for_spec(spec, tok)), generator=torch.Generator())
            batches, times = iter(loader), []
            for _ in range(steps):
                t = time.perf_counter()
                next(batches)
                python_work(python_iterations)  # launching the step's kernels: holds the GIL
                time.sleep(step_ms * 4 / 5 / 1000)  # the device computes: the GIL is free
                times.append(time.perf_counter() - t)
            loader.close()
            t = times[WARMUP:]
            median, mean = statistics.median(t), statistics.fmean(t)
            print(f"prefetch {n}: {len(t)} steps of {batch} x {max_seq_len} tokens, {step_ms:.0f} ms stand-in GPU step: "
                  f"median {median:.3f}s mean {mean:.3f}s (mean/median {mean / median:.2f}) "
                  f"p95 {statistics.quantiles(t, n=20)[18]:.3f}s max {max(t):.3f}s", flush=True)


def measure(uri: str, mode: str, max_seq_len: int, env: dict[str, str]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", uri, "--mode", mode, "--max-seq-len", str(max_seq_len)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="100 MB instead of 1 GB as the large size")
    p.add_argument("--max-seq-len", type=int, default=2048)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--mode", default="stream", help=argparse.SUPPRESS)
    p.add_argument("--prefetch", help="comma-separated training.prefetch values: step times instead of memory")
    p.add_argument("--steps", type=int, default=40, help="training steps per --prefetch value")
    p.add_argument("--device-step", type=float, help="with --prefetch: a stand-in GPU step of this many ms")
    p.add_argument("--step-child", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.mode, args.max_seq_len)
    if args.step_child:
        return step_child(Path(args.step_child), int(args.prefetch), args.steps, args.max_seq_len)
    if args.prefetch is not None and args.device_step:
        return device_steps([int(n) for n in args.prefetch.split(",")], args.steps, args.max_seq_len, args.device_step)
    if args.prefetch is not None:
        return step_times([int(n) for n in args.prefetch.split(",")], args.steps, args.max_seq_len)

    import logging

    import boto3

    from tests.integration.servers import moto_s3, s3_env

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server: no line per request

    sizes = {"10 MB": 10 * MB, "100 MB" if args.quick else "1 GB": (100 if args.quick else 1024) * MB}
    with moto_s3() as endpoint, tempfile.TemporaryDirectory(prefix="kubetune-bench-") as tmp:
        env = {**os.environ, **s3_env(endpoint), "PYTHONPATH": str(ROOT)}
        os.environ.update(s3_env(endpoint))
        client = boto3.client("s3")
        client.create_bucket(Bucket="bench")
        uris = {}
        for i, (name, size) in enumerate(sizes.items()):
            started = time.perf_counter()
            prefix = name.replace(" ", "").lower()
            n = upload(client, "bench", prefix, size, Path(tmp), seed=i)
            uris[name] = f"s3://bench/{prefix}/"
            print(f"wrote {name}: {n:,} rows to {uris[name]} in {time.perf_counter() - started:.0f}s", flush=True)
        results = {}
        for name, uri in uris.items():
            results[name] = r = measure(uri, "stream", args.max_seq_len, env)
            print(f"stream {name:>6}: peak RSS {r['rss_peak']:7.0f} MB (at start {r['rss_start']:.0f} MB), "
                  f"{r['rows'] / r['seconds']:,.0f} rows/s, {r['tokens'] / r['seconds']:,.0f} tokens/s, "
                  f"{r['rows']:,} rows -> {r['packed']:,} rows of {args.max_seq_len}, fill {r['fill']:.2%}", flush=True)
        small, large = list(sizes)
        base = measure(uris[small], "build_dataset", args.max_seq_len, env)
        print(f"baseline build_dataset {small}: peak RSS {base['rss_peak']:.0f} MB, "
              f"{base['rows'] / base['seconds']:,.0f} rows/s, fill {base['fill']:.2%} (one best fit over all samples)")
        ratio = results[large]["rss_peak"] / results[small]["rss_peak"]
        print(f"peak RSS ratio {large} / {small}: {ratio:.3f} (target <= 1.1)")
        print(f"packing fill, window / global best fit ({small}): {results[small]['fill']:.2%} / {base['fill']:.2%}")


if __name__ == "__main__":
    main()
