"""`launch submit --local` with a deliberately broken chat template: training succeeds, the
export's verification gate fails with a readable report, and nothing is registered.

The template ends each assistant turn with a special token that llama.cpp does not stop on
(a reserved Llama 3 token): every runtime renders the conversation identically, training
learns to end answers with it (it is the template's end of turn, so sampling stops there),
but llama.cpp and Ollama would never stop generating after an answer (llama.cpp #5040,
ollama #6823): exactly what the gate exists to catch before users do. (A template that ends
turns with plain text no longer gets this far: training refuses it, trainer/data/render.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.e2e.submit import submit_local
from tests.models import tiny_model, write_chat_jsonl

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NO_END_OF_TURN = (
    "{% for m in messages %}### {{ m.role }}:\n{{ m.content }}<|reserved_special_token_3|>\n\n{% endfor %}"
    "{% if add_generation_prompt %}### assistant:\n{% endif %}"
)


def test_broken_chat_template_fails_the_gate_and_registers_nothing(tmp_path: Path) -> None:
    write_chat_jsonl(tmp_path / "data" / "train.jsonl", n=32, seed=1)
    write_chat_jsonl(tmp_path / "data" / "eval.jsonl", n=4, seed=2)
    (tmp_path / "plain.jinja").write_text(NO_END_OF_TURN)
    spec = {
        "name": "e2e-broken-template",
        "base_model": str(tiny_model("llama")),
        "model": {"dtype": "float32", "chat_template": "plain.jinja"},
        "adapter": {"r": 4, "alpha": 8},
        "data": {"train": "data/train.jsonl", "eval": "data/eval.jsonl", "max_seq_len": 128},
        "training": {"max_steps": 4, "per_device_batch_size": 2},
        "resources": {"gpu": "none"},
        "eval": {"num_samples": 0},
        "export": {"gguf": ["q8_0"], "verify": {"golden_conversations": 2}, "register": {"name": "broken"}},
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    done = submit_local(path)
    log = done.stdout + done.stderr
    assert done.returncode == 1, log[-6000:]

    out = tmp_path / "runs" / "e2e-broken-template"
    assert (out / "_SUCCESS").exists(), "training itself must have succeeded:\n" + log[-8000:]
    assert "[export]" in done.stdout  # the export pod ran, with its own log prefix
    report = (out / "export" / "verify.txt").read_text()
    assert "stopping" in report and "<|reserved_special_token_3|>" in report, report
    assert "is not an end-of-generation token for llama.cpp" in report, report
    assert f"verification report: {out}/export/verify.txt" in done.stderr, done.stderr[-2000:]
    assert not (out / "export" / "_SUCCESS").exists()

    from mlflow import MlflowClient

    marker = json.loads((out / "_SUCCESS").read_text())
    assert MlflowClient(tracking_uri=marker["tracking_uri"]).search_registered_models() == []
