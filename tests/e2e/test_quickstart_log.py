"""The quickstart's path, tiny: `launch submit --local` of a job whose base model is a quantized GGUF (as
examples/quickstart.yaml's Gemma 3 270M Q4_K_M), trained, then exported to q8_0 — and what its user reads.

Loading a GGUF base prints tqdm's "Converting and de-quantizing GGUF tensors" bar, in the training pod and in
the export pod; without a terminal a bar is hundreds of `\\r`-joined states. The output captured here, as bytes
(text mode would turn each `\\r` into a line end and hide them), must have none: every carriage return split
into its own prefixed line by the local runner (launcher/backends/local_lines.py), the bar a few plain lines,
never two pods' prefixes on one line.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.models import write_chat_jsonl
from tests.unit.test_model import gguf_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
ARCH = "phi3"  # a 32k-token vocabulary: converted and read from GGUF much faster than Llama 3's 128k
BAR = "Converting and de-quantizing GGUF tensors"
PREFIX = re.compile(r"\[(rank \d+|export)[^\]]*\] ")


def test_a_gguf_base_job_and_its_export_print_no_carriage_return_fragments(tmp_path: Path) -> None:
    (tmp_path / "base").mkdir()
    base = gguf_of(ARCH, tmp_path / "base")  # llama.cpp's converter, as `make setup`'s GGUF was made
    write_chat_jsonl(tmp_path / "data" / "train.jsonl", n=16, seed=1)
    write_chat_jsonl(tmp_path / "data" / "eval.jsonl", n=4, seed=2)
    spec = {
        "name": "e2e-quickstart-log",
        "base_model": str(base),
        "model": {"dtype": "float32"},
        "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
        "data": {"train": "data/train.jsonl", "eval": "data/eval.jsonl", "max_seq_len": 128},
        "training": {"max_steps": 2, "per_device_batch_size": 2},
        "resources": {"gpu": "none"},
        "eval": {"num_samples": 0},
        "export": {"gguf": ["q8_0"], "verify": {"golden_conversations": 2}},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if k != "KUBETUNE_DEBUG"} | {"HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "launcher.cli", "submit", "--local", str(tmp_path / "job.yaml")],
                          capture_output=True, env=env, timeout=1800, cwd=tmp_path)  # bytes: `\r` kept
    out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    assert done.returncode == 0, (out + err)[-6000:]
    assert "[export]" in out, out[-3000:]  # the export pod ran, its lines prefixed

    assert "\r" not in out and "\r" not in err, [line for line in (out + err).split("\n") if "\r" in line][:3]
    lines = out.split("\n")
    assert not [line for line in lines if len(PREFIX.findall(line)) > 1]  # no fragments run together
    bars = [line for line in lines if BAR in line]
    trained, exported = ([b for b in bars if b.startswith(p)] for p in ("[rank 0] ", "[export] "))
    assert trained and exported and len(trained) + len(exported) == len(bars), bars  # each a pod's own line
    for bar in (trained, exported):  # a few plain lines per load, each a whole state, up to 100%
        assert len(bar) <= 12, bar
        assert all(re.search(rf"{BAR}\.*: +\d+%\|", b) for b in bar), bar
        assert any(re.search(rf"{BAR}\.*: 100%\|", b) for b in bar), bar
