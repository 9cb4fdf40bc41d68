"""Throughput of OUR trainer on one GPU, for the plain job and for each GPU option (`scripts/gpu_check.sh --speed`).

    python scripts/gpu_speed.py                       # one CUDA GPU, bf16, a random Qwen2.5-1.5B-shaped model
    python scripts/gpu_speed.py --cpu --tiny          # the same flow on CPU, a tiny model, 3 steps (the suite runs it)
    python scripts/gpu_speed.py --save-tokenizer DIR  # here, before a machine without `make setup`'s resources
    python scripts/gpu_speed.py --tokenizer DIR       # there
    python scripts/gpu_speed.py --plan h200 --batch 8 # anywhere: only what `launch plan` predicts for each row

Each configuration is one job spec written here and started as a pod starts the trainer, through the supervisor:
`python -m trainer.train.supervise python scripts/gpu_speed.py --child -- --spec job.yaml`, where `--child` runs
`trainer.train.loop.main` (the entry point of `python -m trainer.train`) and then records the process's peak memory
(`torch.cuda.max_memory_allocated`, or the peak RSS on CPU). The model: Qwen2 with Qwen2.5-1.5B's shape from its
config, random weights, Qwen2's real tokenizer (tests/resources.py); the data: chat rows, packed, completions only.

One line per configuration: median and mean step time (the wall time between consecutive step log lines, after
`--warmup` steps), trained tokens/s and MFU as the trainer logs them per step (trainer/tracking/speed.py; MFU
against the GPU catalog's bf16 peak, trainer/spec/gpus.py), peak memory, the last loss, and beside them what
`launch plan` predicts for the same spec (launcher/plan: the total per device, the part of it that
`torch.cuda.max_memory_allocated` counts, the logits + loss term). A configuration whose
package or GPU is missing prints `skipped (why)`; a failed run prints its exit code and the file and line of the
innermost frame of its traceback (the log stays in the work folder).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QWEN_1_5B = {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
             "num_key_value_heads": 2, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "tie_word_embeddings": True}
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "tie_word_embeddings": True}
WORDS = ("data", "model", "train", "token", "layer", "batch", "queue", "cache", "graph", "shard", "tensor", "kernel",
         "memory", "stream", "packet", "vector", "matrix", "cluster", "node", "pod", "adapter", "weight", "loss", "step")
STEP = re.compile(r"\[train\] step (\d+)/\d+ loss ([\d.naif]+).*?(?:tokens/s ([\d,]+))?(?: MFU ([\d.]+)%)?\s*$")
FRAME = re.compile(r'File "([^"]+)", line (\d+)')


@dataclass(frozen=True)
class Config:
    name: str
    training: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    needs: tuple[str, ...] = ()  # Python packages besides the trainer's
    gpu_only: bool = True


CONFIGS = (
    Config("base (sdpa, loss chunked)", gpu_only=False),
    Config("loss full", {"loss": "full"}, gpu_only=False),
    Config("padding_free + flash_attention_2", {"padding_free": True}, {"attn_implementation": "flash_attention_2"},
           ("flash_attn",)),
    Config("kernels liger + loss liger", {"kernels": "liger", "loss": "liger"}, needs=("liger_kernel", "triton")),
    Config("loss cce", {"loss": "cce"}, needs=("cut_cross_entropy", "triton")),
    Config("compile", {"compile": True}),
    Config("qlora 4bit", model={"quantization": "4bit"}, needs=("bitsandbytes",)),
)


def skip_reason(config: Config, cuda: bool) -> str | None:
    if config.gpu_only and not cuda:
        return "needs a CUDA GPU"
    missing = [m for m in config.needs if importlib.util.find_spec(m) is None]
    return f"{', '.join(missing)} not installed" if missing else None


# -- model and data -----------------------------------------------------------------------------------------------
def tokenizer(saved: Path | None) -> Any:
    if saved is not None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(saved)
    from tests.resources import tokenizer_for

    return tokenizer_for("qwen2")


def build_model(out: Path, tok: Any, tiny: bool, dtype: str) -> Path:
    """Qwen2 with Qwen2.5-1.5B's shape (or a tiny one), random weights, saved with `tok` (once per work folder)."""
    if (out / "config.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    vocab = 151936 if not tiny else -(-len(tok) // 64) * 64
    config = Qwen2Config(**(TINY if tiny else QWEN_1_5B), vocab_size=vocab, bos_token_id=None,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def write_data(path: Path, rows: int, seq: int, seed: int = 0) -> Path:
    """Chat rows of up to about seq / 2 tokens (a word is one or two tokens), so that several share a packed row."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(rows):
            q = " ".join(rng.choices(WORDS, k=rng.randint(4, max(5, seq // 16))))
            a = " ".join(rng.choices(WORDS, k=rng.randint(8, max(9, seq // 5))))
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}) + "\n")
    return path


def job_spec(config: Config, args: argparse.Namespace, model: Path, data: Path, out: Path) -> dict[str, Any]:
    dtype = "float32" if args.cpu else "bfloat16"
    return {
        "name": "speed", "base_model": str(model),
        "model": {"dtype": dtype, **config.model},
        "adapter": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "data": {"train": str(data), "max_seq_len": args.seq, "packing": True, "train_on": "completions",
                 "too_long": "truncate"},
        "training": {"max_steps": args.steps, "per_device_batch_size": args.batch, "learning_rate": 1e-4,
                     "warmup_ratio": 0.0, "lr_scheduler": "constant", "logging_steps": 1, **config.training},
        "resources": {"gpu": "none"} if args.cpu else {"gpu": "any", "gpus_per_node": 1, "nodes": 1},
        "output": {"uri": str(out)},
        "eval": {"num_samples": 0},
    }


# -- one run ------------------------------------------------------------------------------------------------------
def run(config: Config, args: argparse.Namespace, model: Path, data: Path, index: int) -> str:
    import yaml

    folder = args.workdir / f"run-{index}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "job.yaml").write_text(yaml.safe_dump(job_spec(config, args, model, data, folder / "out")))
    peak_file = folder / "peak.json"
    peak_file.unlink(missing_ok=True)
    env = os.environ | {"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "KUBETUNE_JOB_NAME": f"speed-{index}",
                        "KUBETUNE_WORK_DIR": str(folder / "work"),
                        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    argv = [sys.executable, "-m", "trainer.train.supervise", sys.executable, str(Path(__file__).resolve()), "--child",
            str(peak_file), "--", "--spec", str(folder / "job.yaml")]
    steps: list[tuple[float, int, float, float | None, float | None]] = []  # time, step, loss, tokens/s, MFU
    started = time.perf_counter()
    with (folder / "train.log").open("w") as log:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            if m := STEP.search(line):
                tps = float(m[3].replace(",", "")) if m[3] else None
                steps.append((time.perf_counter(), int(m[1]), float(m[2]), tps, float(m[4]) / 100 if m[4] else None))
            if time.perf_counter() - started > args.timeout:
                proc.kill()
        code = proc.wait()
    if code != 0:
        return f"FAILED (exit {code}{where(folder / 'train.log')}; log {folder / 'train.log'})"
    return f"{summary(steps, peak_file, args.warmup, time.perf_counter() - started)}; {predicted(folder / 'job.yaml')}"


def predicted(spec_path: Path) -> str:
    """What `launch plan` predicts for the same job spec: its total per device, and that total less the CUDA context
    and allocator slack (what `torch.cuda.max_memory_allocated` measures), and its logits + loss term."""
    from launcher.plan import report, source
    from trainer.spec.io import load_specs

    (spec,) = load_specs(spec_path, [])
    parts = report.make(spec, source.architecture(spec, spec_path.parent)).estimate.parts
    total, overhead = sum(parts.values()), parts.get("CUDA + allocator", 0)
    return (f"plan {total / 2**30:.2f} GiB ({(total - overhead) / 2**30:.2f} GiB allocated, logits + loss "
            f"{parts.get('logits + loss', 0) / 2**30:.2f} GiB)")


def where(log: Path) -> str:
    """`: file:line: error` of the innermost traceback frame in the log (ours where one is ours)."""
    lines = log.read_text(errors="replace").splitlines()
    frames = [(m[1], m[2]) for line in lines if (m := FRAME.search(line))]
    if not frames:
        return ""
    ours = [f for f in frames if str(ROOT) in f[0] and "/.venv/" not in f[0]]
    file, line = (ours or frames)[-1]
    error = next((x.strip() for x in reversed(lines) if re.match(r"^\w+(\.\w+)*(Error|Exception)\b", x.strip())), "")
    return f": {Path(file).relative_to(ROOT) if str(ROOT) in file else file}:{line}" + (f": {error[:200]}" if error else "")


def summary(steps: list[tuple[float, int, float, float | None, float | None]], peak_file: Path, warmup: int,
            seconds: float) -> str:
    gaps = [(b[0] - a[0], b) for a, b in zip(steps, steps[1:], strict=False)][warmup:]
    if not gaps:
        return f"no timed steps ({len(steps)} logged, warm-up {warmup})"
    times = [g for g, _ in gaps]
    total = sum(times)
    tps = [(g, s[3]) for g, s in gaps if s[3] is not None]
    mfu = [(g, s[4]) for g, s in gaps if s[4] is not None]
    rate = sum(g * v for g, v in tps) / sum(g for g, _ in tps) if tps else None
    util = sum(g * v for g, v in mfu) / sum(g for g, _ in mfu) if mfu else None
    peak = json.loads(peak_file.read_text()) if peak_file.is_file() else {}
    return (f"{len(steps)} steps ({len(times)} timed), step median {statistics.median(times):.3f}s mean "
            f"{total / len(times):.3f}s, {f'{rate:,.0f}' if rate else '?'} trained tokens/s, peak "
            f"{peak.get('bytes', 0) / 2**30:.2f} GiB ({peak.get('what', '?')}), MFU "
            f"{f'{util:.1%}' if util is not None else 'n/a'}, last loss {steps[-1][2]:.4f}, {seconds:.0f}s in all")


def child(peak_file: Path, argv: list[str]) -> int:
    """`trainer.train`'s entry point, then this process's peak memory to `peak_file`."""
    import torch

    from trainer.train.loop import main

    code = main(argv)
    if torch.cuda.is_available():
        peak = {"bytes": torch.cuda.max_memory_allocated(), "what": "torch.cuda.max_memory_allocated"}
    else:
        peak = {"bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "what": "peak RSS"}
    peak_file.write_text(json.dumps(peak))
    return code


# -- the table ----------------------------------------------------------------------------------------------------
def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="run on CPU (float32), skipping the GPU-only options")
    p.add_argument("--tiny", action="store_true", help="a 2-layer model instead of Qwen2.5-1.5B's shape")
    p.add_argument("--steps", type=int, help="optimizer steps per configuration (default 30; 3 with --tiny)")
    p.add_argument("--batch", type=int, help="rows per micro-batch (default 4; 2 with --tiny)")
    p.add_argument("--seq", type=int, help="data.max_seq_len (default 2048; 256 with --tiny)")
    p.add_argument("--warmup", type=int, help="step intervals left out of the timing (default 5; 0 with --tiny)")
    p.add_argument("--only", help="comma-separated words; run the configurations whose name holds one")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/kubetune-gpu-speed"))
    p.add_argument("--tokenizer", type=Path, help="a saved tokenizer folder (from --save-tokenizer)")
    p.add_argument("--save-tokenizer", type=Path, help="save Qwen2's real tokenizer (tests/resources.py) and exit")
    p.add_argument("--timeout", type=int, default=300, help="seconds per configuration")
    p.add_argument("--plan", metavar="GPU", help="print only what `launch plan` predicts for each configuration on "
                   "this catalog GPU (e.g. h200), without running anything")
    args = p.parse_args(argv)
    for name, tiny, full in (("steps", 3, 30), ("batch", 2, 4), ("seq", 256, 2048), ("warmup", 0, 5)):
        if getattr(args, name) is None:
            setattr(args, name, tiny if args.tiny else full)
    return args


def plan_only(args: argparse.Namespace) -> int:
    """`--plan GPU`: what `launch plan` predicts for each configuration's spec on that catalog GPU, run nowhere (the
    model's config.json alone, no weights, no torch)."""
    import yaml
    from transformers import Qwen2Config

    if args.tiny or args.cpu:
        print("gpu_speed: --plan predicts the GPU job (Qwen2.5-1.5B shape, bf16); leave out --tiny and --cpu")
        return 2
    folder = args.workdir / "plan"
    model = folder / "model-qwen2.5-1.5b-config"
    Qwen2Config(**QWEN_1_5B, vocab_size=151936, bos_token_id=None).save_pretrained(model)
    print(f"gpu_speed: launch plan's prediction on {args.plan}, batch {args.batch}, max_seq_len {args.seq}, packed, "
          "completions only, LoRA r16 all-linear, bfloat16 (nothing runs)")
    for index, config in enumerate(CONFIGS):
        spec = job_spec(config, args, model, folder / "train.jsonl", folder / "out")
        spec["resources"]["gpu"] = args.plan
        path = folder / f"job-{index}.yaml"
        path.write_text(yaml.safe_dump(spec))
        print(f"{config.name:34} {predicted(path)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return child(Path(argv[1]), argv[3:] if argv[2:3] == ["--"] else argv[2:])
    args = parse(argv)
    if args.save_tokenizer:
        tokenizer(None).save_pretrained(args.save_tokenizer)
        print(f"gpu_speed: saved Qwen2's tokenizer to {args.save_tokenizer}")
        return 0
    if args.plan:
        return plan_only(args)
    import torch

    cuda = torch.cuda.is_available() and not args.cpu
    if not cuda and not args.cpu:
        print("gpu_speed: no CUDA GPU here (use --cpu --tiny to try the flow on CPU)")
        return 2
    args.workdir.mkdir(parents=True, exist_ok=True)
    dtype = "float32" if args.cpu else "bfloat16"
    model = build_model(args.workdir / f"model-{'tiny' if args.tiny else 'qwen2.5-1.5b'}-{dtype}",
                        tokenizer(args.tokenizer), args.tiny, dtype)
    data = write_data(args.workdir / "train.jsonl", max(64, args.steps * args.batch * args.seq // 150), args.seq)
    device = torch.cuda.get_device_name(0) if cuda else "CPU"
    print(f"gpu_speed: {device}, torch {torch.__version__}, model {model.name}, {args.steps} steps, batch "
          f"{args.batch}, max_seq_len {args.seq}, packed, completions only, LoRA r16 all-linear, {dtype}")
    failed = 0
    for index, config in enumerate(CONFIGS):
        if args.only and not any(w.strip() in config.name for w in args.only.split(",")):
            continue
        result = f"skipped ({why})" if (why := skip_reason(config, cuda)) else run(config, args, model, data, index)
        failed += result.startswith("FAILED")
        print(f"{config.name:34} {result}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
