"""The quickstart job before and after the loss, prefetch and fused-norm work: step time and eval loss, same machine.

    python bench/quickstart.py                 # 2 x 12 steps of Gemma 3 270M: ~9 minutes on 2 busy CPU cores
    python bench/quickstart.py --steps 8       # quicker, noisier
    python bench/quickstart.py --rounds 2      # before, after, before, after: order effects average out

Runs `examples/quickstart.yaml` (Gemma 3 270M from the pip-installed GGUF, `make setup` writes it) through the
trainer's own entry point, `python -m trainer.train --spec examples/quickstart.yaml --set ...`, as the quickstart's
pod runs it (what `make quickstart` adds around it, rendering the chart and the export job, is not timed):

  before   --set training.loss=full --set training.prefetch=0 --set training.kernels=none   (the model's logits
           everywhere, batches made in the training loop, transformers' own RMSNorms: the behaviour before issue 16)
  after    the spec as written (training.loss chunked and training.prefetch 2 by default, and the quickstart's
           `training.kernels: torch`: the fused RMSNorm)

Both with the same `--set training.max_steps=N --set training.logging_steps=1 --set eval.num_samples=0` (no sample
answers: they take time and are not training) and their own output folder. Step times come from the run's MLflow
store: the timestamp of each step's `loss` metric, logged as that step ends; the first `--warmup` steps are not
counted. Eval loss is the run's `eval_loss` metric on `data.eval` after the last step.

Targets: the median step time at least 30% lower after than before, and the eval loss the same within
`--loss-tolerance` (relative; both runs have the same seed, data and initial adapter, so only arithmetic differs).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "quickstart.yaml"
BEFORE = ("training.loss=full", "training.prefetch=0", "training.kernels=none")
STEP_TIME_CUT = 0.30  # after's median step time at most (1 - this) x before's
RUN_LINE = re.compile(r"MLflow run (\w+) at (\S+)")


@dataclass
class Result:
    label: str
    step_times: list[float] = field(default_factory=list)
    tokens_per_s: list[float] = field(default_factory=list)
    eval_losses: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0

    def stats(self) -> tuple[float, float, float]:
        t = sorted(self.step_times)
        return statistics.median(t), statistics.fmean(t), t[min(len(t) - 1, math.ceil(0.95 * len(t)) - 1)]  # nearest rank


def train(overrides: list[str], out: Path, threads: int) -> tuple[str, str, str]:
    """One `python -m trainer.train` run; -> (its output, MLflow run id, tracking URI)."""
    cmd = [sys.executable, "-m", "trainer.train", "--spec", str(SPEC)]
    for item in (f"output.uri={out}", *overrides):
        cmd += ["--set", item]
    env = os.environ | {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads), "KUBETUNE_WORK_DIR": str(out / "work"),
                        "KUBETUNE_JOB_NAME": f"bench-{out.name}", "HF_HUB_OFFLINE": "1"}
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {proc.returncode}:\n" + "\n".join(output.splitlines()[-40:]))
    found = RUN_LINE.findall(output)
    if not found:
        sys.exit(f"no 'MLflow run <id> at <uri>' line in the trainer's output:\n{output[-3000:]}")
    run_id, uri = found[-1]
    return output, run_id, uri


def measure(result: Result, run_id: str, uri: str, warmup: int) -> None:
    """Step times from the `loss` metric's timestamps; tokens/s and eval loss from the run's metrics."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    losses = sorted(client.get_metric_history(run_id, "loss"), key=lambda m: m.step)
    ends = {m.step: m.timestamp / 1000 for m in losses}
    steps = sorted(ends)
    if len(steps) <= warmup + 1:
        sys.exit(f"run {run_id}: {len(steps)} logged steps, too few to measure after {warmup} warm-up steps")
    result.step_times += [ends[s] - ends[p] for p, s in zip(steps[warmup:], steps[warmup + 1 :], strict=False)
                          if s == p + 1]
    tps = {m.step: m.value for m in client.get_metric_history(run_id, "tokens_per_second")}
    result.tokens_per_s += [tps[s] for s in steps[warmup + 1 :] if s in tps]
    evals = client.get_metric_history(run_id, "eval_loss")
    if not evals:
        sys.exit(f"run {run_id} has no eval_loss metric (does the spec still have data.eval?)")
    result.eval_losses.append(max(evals, key=lambda m: m.step).value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12, help="training.max_steps of each run")
    p.add_argument("--warmup", type=int, default=2, help="first steps not timed")
    p.add_argument("--rounds", type=int, default=1, help="before/after pairs, alternating")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OMP_NUM_THREADS of every run")
    p.add_argument("--loss-tolerance", type=float, default=0.01, help="relative eval-loss difference taken as noise")
    a = p.parse_args(argv)
    if not 0 <= a.warmup < a.steps - 1:
        p.error("--warmup must leave at least two timed steps")
    return a


def report(before: Result, after: Result, a: argparse.Namespace) -> None:
    print(f"\n{'run':<8}{'step median':>12}{'mean':>9}{'p95':>9}{'tokens/s (median)':>19}{'eval loss':>11}"
          f"{'wall s':>8}   settings")
    for r, how in ((before, " ".join(f"--set {o}" for o in BEFORE)), (after, "the spec as written")):
        med, mean, p95 = r.stats()
        tps = statistics.median(r.tokens_per_s) if r.tokens_per_s else float("nan")
        print(f"{r.label:<8}{med:>11.3f}s{mean:>8.3f}s{p95:>8.3f}s{tps:>19,.0f}"
              f"{statistics.fmean(r.eval_losses):>11.4f}{r.wall_seconds:>8.0f}   {how}")
    cut = 1 - after.stats()[0] / before.stats()[0]
    print(f"\ntarget step time at least {STEP_TIME_CUT:.0%} lower: {cut:.1%} lower "
          f"{'met' if cut >= STEP_TIME_CUT else 'NOT met'}")
    lb, la = statistics.fmean(before.eval_losses), statistics.fmean(after.eval_losses)
    rel = abs(la - lb) / abs(lb)
    print(f"target same eval loss within {a.loss_tolerance:.1%}: {lb:.4f} -> {la:.4f} ({rel:.2%}) "
          f"{'met' if rel <= a.loss_tolerance else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    common = [f"training.max_steps={a.steps}", "training.logging_steps=1", "eval.num_samples=0"]
    before, after = Result("before"), Result("after")
    with tempfile.TemporaryDirectory(prefix="kubetune-bench-quickstart-") as tmp:
        for i in range(a.rounds):
            for result, extra in ((before, list(BEFORE)), (after, [])):
                t0 = time.perf_counter()
                _, run_id, uri = train(common + extra, Path(tmp) / f"{result.label}-{i}", a.threads)
                result.wall_seconds += time.perf_counter() - t0
                measure(result, run_id, uri, a.warmup)
    print(f"{a.rounds} round(s) of {a.steps} steps, {a.warmup} warm-up steps not timed, {a.threads} threads")
    report(before, after, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
