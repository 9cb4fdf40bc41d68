"""Restart-to-first-step after a preemption, against a cold start of the same job.

    python bench/resume.py                # ~2 minutes on 2 CPU cores
    python bench/resume.py --repeat 5     # steadier medians

Each round runs the same spec (a tiny random Llama with a real tokenizer, 1 node, CPU) through
`launch submit --local` twice, the way a user or Kubernetes would:

  cold      a fresh submission: from starting `launch` to its first `[train] step` line. The local
            runner then sends it SIGTERM (KUBETUNE_LOCAL_SIGTERM), so it stops with a checkpoint.
  restart   `launch submit --local --resume NAME`: from starting `launch` to its first `[train] step`
            line, the step after the checkpoint. It includes reading the manifest, fetching and
            checking the checkpoint (sha256), and loading adapter, optimizer, scheduler and RNG states.

Both include what every start pays (Python imports, helm, accelerate launch, loading the base
model); the cold start also creates the local MLflow store, which the restart finds. The ratio is
restart / cold, target <= 1.2.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FIRST_STEP = re.compile(r"\[train\] step (\d+)/")
RESUME = re.compile(r"--resume (\S+) ")


def write_job(folder: Path, steps: int) -> Path:
    import yaml

    from tests.models import copy_model, write_chat_jsonl

    model = copy_model("llama", folder / "model")
    write_chat_jsonl(folder / "train.jsonl", n=256, seed=1)
    spec = {
        "name": "bench-resume",
        "base_model": str(model),
        "model": {"dtype": "float32"},
        "adapter": {"r": 8, "alpha": 16},
        "data": {"train": "train.jsonl", "max_seq_len": 128},
        "training": {"max_steps": steps, "per_device_batch_size": 2, "logging_steps": 1},
        "resources": {"gpu": "none"},
        "eval": {"num_samples": 0},
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def launch(spec: Path, args: list[str]) -> tuple[float, int, str]:
    """Run `launch submit --local`; seconds to the first step line, that step, and the output. The run is
    stopped by the SIGTERM that KUBETUNE_LOCAL_SIGTERM asks for (it checkpoints and exits 75)."""
    env = {k: v for k, v in os.environ.items() if k != "KUBETUNE_DEBUG"} | {"HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "launcher.cli", "submit", "--local", str(spec), *args],
                            cwd=spec.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    first: tuple[float, int] | None = None
    out = []
    for line in proc.stdout:
        out.append(line)
        if first is None and (m := FIRST_STEP.search(line)):
            first = (time.perf_counter() - started, int(m.group(1)))
    code = proc.wait()
    text = "".join(out)
    if first is None or code != 75:
        sys.exit(f"launch exited {code} without the expected checkpoint; its output:\n{text[-4000:]}")
    return first[0], first[1], text


def round_trip(spec: Path, steps_before: int) -> tuple[float, float, int]:
    """(cold seconds, restart seconds, step resumed from) for one fresh job."""
    shutil.rmtree(spec.parent / "runs", ignore_errors=True)
    os.environ["KUBETUNE_LOCAL_SIGTERM"] = rf"0:\[train\] step {steps_before}/"
    cold, _, text = launch(spec, [])
    (name,) = RESUME.findall(text)
    os.environ["KUBETUNE_LOCAL_SIGTERM"] = r"0:\[train\] step \d+/"  # stop again right after the first step
    restart, step, _ = launch(spec, ["--resume", name])
    return cold, restart, step - 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=3, help="rounds (medians are printed)")
    p.add_argument("--steps-before", type=int, default=3, help="steps of the cold run before its SIGTERM")
    args = p.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="kubetune-bench-resume-"))
    try:
        spec = write_job(folder, steps=200)
        colds, restarts = [], []
        for i in range(args.repeat):
            cold, restart, step = round_trip(spec, args.steps_before)
            colds.append(cold)
            restarts.append(restart)
            print(f"round {i + 1}: cold start {cold:.1f}s to step 1; restart {restart:.1f}s to step {step + 1} "
                  f"(resumed from step {step})", flush=True)
        cold, restart = statistics.median(colds), statistics.median(restarts)
        print(f"\ncold start to first step:            {cold:6.1f}s (median of {args.repeat})")
        print(f"restart after SIGTERM to first step: {restart:6.1f}s")
        print(f"ratio restart / cold: {restart / cold:.2f} (target <= 1.2)")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
