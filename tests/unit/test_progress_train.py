"""The trainer publishes its progress while it trains (trainer/tracking/progress_callback.py wired in
trainer/train/loop.py): a real run on a tiny llama writes the document at every logging step, the last one at the
end, with the numbers the log line has; and `launch`'s reader makes the same line of it."""

from __future__ import annotations

import contextlib
import io
import json
import os
import threading
from pathlib import Path

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from launcher.progress import parse_progress, progress_line  # noqa: E402
from tests.models import tiny_model, write_chat_jsonl  # noqa: E402
from trainer.train import loop as train  # noqa: E402


def test_a_run_publishes_every_logging_step_and_ends_at_its_last(tmp_path: Path) -> None:
    write_chat_jsonl(tmp_path / "train.jsonl", 32, seed=0)
    spec = {"name": "tiny-progress", "base_model": str(tiny_model("llama")), "model": {"dtype": "float32"},
            "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
            "data": {"train": "train.jsonl", "max_seq_len": 64},
            "training": {"max_steps": 12, "per_device_batch_size": 2, "logging_steps": 4},
            "resources": {"gpu": "none"}, "output": {"uri": "out"}, "eval": {"num_samples": 0}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(spec))
    target = tmp_path / "progress.json"
    seen: list[str] = []
    stop = threading.Event()

    def watch() -> None:  # what `launch status` would read, while the job runs
        while not stop.is_set():
            if target.exists():
                text = target.read_text()
                if not seen or seen[-1] != text:
                    seen.append(text)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(io.StringIO()):
            mp.setenv("KUBETUNE_WORK_DIR", str(tmp_path / "work"))
            mp.setenv("KUBETUNE_PROGRESS_FILE", str(target))
            mp.delenv("KUBETUNE_PROGRESS_JOB", raising=False)
            assert train.main(["--spec", str(tmp_path / "job.yaml")]) == 0
    finally:
        stop.set()
        watcher.join()
    docs = [json.loads(text) for text in seen]
    steps = [d["step"] for d in docs]
    assert steps == sorted(steps) and {4, 8, 12} <= set(steps) and steps[-1] == 12  # each logging step's
    last = docs[-1]
    assert last["phase"] == "training" and last["total_steps"] == 12 and last["eta_seconds"] == 0.0
    assert last["detail"] is None and last["epoch"] > 0 and last["trained_tokens"] > 0
    assert last["tokens_per_second"] > 0 and last["loss"] > 0 and last["learning_rate"] is not None
    assert last["mfu"] is not None and 0 < last["mfu"] < 1  # CPU: against the peak measured at start-up
    assert docs[1]["eta_seconds"] is not None and docs[1]["eta_seconds"] > 0  # from the steps since the first log
    assert progress_line(parse_progress(seen[-1])).startswith("training step 12/12 (100%) · epoch ")
