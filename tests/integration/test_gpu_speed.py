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
                         r"peak [\d.]+ GiB \(peak RSS\), MFU [\d.]+%, last loss [\d.]+", line), line
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
