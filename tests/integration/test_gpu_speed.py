"""`scripts/gpu_check.sh --speed` on CPU (`--cpu --tiny`): the throughput check's whole flow with a tiny model.

On a GPU machine the same script trains a Qwen2.5-1.5B-shaped model in bf16 with each GPU option
(docs/performance.md); here it runs the configurations a CPU can run through the real trainer entry point and
supervisor, and says why it skips the others. The failure report (file and line of the innermost traceback frame,
ours first) is checked on a log as a failed run leaves it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def gpu_speed() -> object:
    spec = importlib.util.spec_from_file_location("gpu_speed", ROOT / "scripts" / "gpu_speed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_speed"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU dry run; a GPU machine runs the real check")
def test_speed_check_dry_run_on_cpu(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_", "MASTER_"))}
    env.setdefault("KUBETUNE_LLAMA_CPP_DIR", str(ROOT / ".cache" / "llama.cpp"))
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run([str(ROOT / "scripts" / "gpu_check.sh"), "--speed", "--cpu", "--tiny", "--workdir",
                           str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for name in ("base (sdpa, loss chunked)", "loss full"):
        line = next(x for x in out.splitlines() if x.startswith(name))
        assert re.search(r"3 steps \(2 timed\), step median [\d.]+s mean [\d.]+s, [\d,]+ trained tokens/s, "
                         r"peak [\d.]+ GiB \(peak RSS\), MFU [\d.]+%, last loss [\d.]+, \d+s in all; "
                         r"plan [\d.]+ GiB \([\d.]+ GiB allocated, logits \+ loss [\d.]+ GiB\)$", line), line
    plans = {name: float(re.search(r"logits \+ loss ([\d.]+) GiB", line)[1]) for line in out.splitlines()
             for name in ("base", "loss full") if line.startswith(name)}
    assert plans["base"] < plans["loss full"], plans  # the plan counts the chunked loss's smaller term
    for name in ("padding_free + flash_attention_2", "kernels liger + loss liger", "loss cce", "compile",
                 "qlora 4bit"):
        assert f"{name}".ljust(34) + " skipped (needs a CUDA GPU)" in out
    assert (tmp_path / "speed" / "run-0" / "job.yaml").is_file()  # the spec it wrote, beside the run's log


def test_a_failed_run_is_reported_by_file_and_line(tmp_path: Path) -> None:
    log = tmp_path / "train.log"
    log.write_text(
        "[kubetune] loaded ...\nTraceback (most recent call last):\n"
        f'  File "{ROOT}/trainer/train/loop.py", line 281, in main\n    job.train()\n'
        f'  File "{ROOT}/trainer/model/kernels.py", line 97, in fused_linear_cross_entropy\n    return loss(...)\n'
        '  File "/opt/torch/.venv/lib/python3.12/site-packages/triton/runtime/jit.py", line 10, in run\n'
        "triton.compiler.errors.CompilationError: at 1:2: bad\n")
    assert gpu_speed().where(log) == (": trainer/model/kernels.py:97: triton.compiler.errors.CompilationError: "
                                      "at 1:2: bad")


def test_plan_only_predicts_each_row_on_a_gpu_without_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--plan h200`: launch plan's numbers for the H200 job (issue 16: the full logits + loss were 16.2 of 49.8 GiB
    at batch 4; the chunked loss must cut that term at least 8x)."""
    assert gpu_speed().main(["--plan", "h200", "--batch", "4", "--workdir", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {m[1].strip(): (float(m[2]), float(m[3])) for line in lines
            if (m := re.match(r"(.{34}) plan ([\d.]+) GiB \([\d.]+ GiB allocated, logits \+ loss ([\d.]+) GiB\)$", line))}
    assert len(rows) == 7, lines
    assert rows["loss full"] == (49.8, 16.23), rows
    assert rows["base (sdpa, loss chunked)"][1] * 8 <= rows["loss full"][1]
    assert not (tmp_path / "plan" / "model-qwen2.5-1.5b-config" / "model.safetensors").exists()  # config only
    assert gpu_speed().main(["--plan", "h200", "--tiny", "--workdir", str(tmp_path)]) == 2
