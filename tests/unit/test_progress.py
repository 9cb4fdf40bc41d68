"""Live progress without MLflow: the document the trainer and the export publish (trainer/tracking/progress.py), its
file sink (atomic), its callback's numbers and ETA (trainer/tracking/progress_callback.py), the cluster sink's
failures and pace against a real HTTP server on loopback, and the launcher reading it back (launcher/progress.py)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from transformers import TrainerState

from launcher.progress import Progress, cell, from_json, parse_progress, progress_json, progress_line
from trainer.tracking.progress import ANNOTATION, FIELDS, Publisher, payload, write_file
from trainer.tracking.progress_callback import ProgressCallback

TRAINING = payload("training", step=120, total_steps=2000, epoch=0.4, trained_tokens=393216, tokens_per_second=3200,
                   eta_seconds=3720, loss=1.234, learning_rate=2e-4, mfu=0.41, updated=1_700_000_000.5)


def test_the_document_has_every_field_null_where_not_measured() -> None:
    assert list(TRAINING) == list(FIELDS)
    assert TRAINING == {"phase": "training", "step": 120, "total_steps": 2000, "epoch": 0.4, "trained_tokens": 393216,
                        "tokens_per_second": 3200.0, "eta_seconds": 3720.0, "loss": 1.234, "learning_rate": 2e-4,
                        "mfu": 0.41, "detail": None, "updated": 1_700_000_000.5}
    export = payload("export", detail="converting q4_k_m")
    assert {k for k, v in export.items() if v is not None} == {"phase", "detail", "updated"}
    assert abs(export["updated"] - time.time()) < 5
    with pytest.raises(TypeError, match="not a progress field: steps"):
        payload("training", steps=1)


def test_the_launcher_reads_back_what_the_trainer_wrote() -> None:
    p = parse_progress(json.dumps(TRAINING))
    assert p == Progress("training", 120, 2000, 0.4, 393216, 3200.0, 3720.0, 1.234, 2e-4, 0.41, None, 1_700_000_000.5)
    assert progress_json(p) == TRAINING | {"fraction": 0.06}
    assert from_json(progress_json(p)) == p


@pytest.mark.parametrize("text", [None, "", "{", "[1, 2]", '"training"', "{}", '{"phase": 3}', '{"phase": ""}'])
def test_what_is_not_a_document_is_none(text: str | None) -> None:
    assert parse_progress(text) is None


def test_a_field_of_the_wrong_type_is_null_not_an_error() -> None:
    p = parse_progress('{"phase": "training", "step": "12", "loss": NaN, "mfu": true, "detail": 5, "epoch": 1}')
    assert p == Progress("training", epoch=1.0)
    assert parse_progress('{"phase": "training", "step": 12.0}').step == 12  # type: ignore[union-attr]


def test_the_lines_say_each_phase() -> None:
    now = TRAINING["updated"] + 10
    assert progress_line(parse_progress(json.dumps(TRAINING)), now=now) == \
        "training step 120/2000 (6%) · epoch 0.4 · 3.2k tokens/s · MFU 41% · loss 1.23 · ETA 62m"
    export = Progress("export", detail="converting q4_k_m", updated=now)
    assert progress_line(export, now=now) == "export: converting q4_k_m"
    assert progress_line(Progress("training", step=3), now=now) == "training step 3"
    assert progress_line(Progress("training", step=5, total_steps=10, eta_seconds=7200.0 * 3), now=now) == \
        "training step 5/10 (50%) · ETA 6h00m"
    # a document no one has rewritten for a while says how old it is (the pod may be gone)
    assert progress_line(Progress("export", detail="verifying q8_0", updated=now - 600), now=now) == \
        "export: verifying q8_0 · updated 10m ago"
    assert cell({"training": parse_progress(json.dumps(TRAINING))}) == "step 120/2000 (6%) ETA 62m"
    assert cell({"training": parse_progress(json.dumps(TRAINING)), "export": export}) == "converting q4_k_m"
    assert cell({}) == "-"


def test_the_file_is_replaced_atomically(tmp_path: Path) -> None:
    """A reader polling the file while it is rewritten 300 times sees whole documents only."""
    target = tmp_path / "progress" / "job.json"
    publisher = Publisher({"KUBETUNE_PROGRESS_FILE": str(target)})
    publisher.publish(payload("training", step=0))
    seen, bad, stop = [], [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            text = target.read_text()
            (seen if parse_progress(text) is not None else bad).append(text)

    reader = threading.Thread(target=read)
    reader.start()
    for step in range(1, 301):
        publisher.publish(payload("training", step=step, total_steps=300, detail=None, loss=1.0 / step) | {
            "padding": "x" * 20_000})  # a large document: a torn write would show
    stop.set()
    reader.join()
    assert bad == [] and seen
    assert json.loads(target.read_text())["step"] == 300
    assert [p.name for p in target.parent.iterdir()] == ["job.json"]  # no temporary file left


def test_a_file_that_cannot_be_written_is_warned_once(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    warnings: list[str] = []
    publisher = Publisher({"KUBETUNE_PROGRESS_FILE": str(tmp_path / "file" / "job.json")}, warn=warnings.append)
    for step in range(3):
        publisher.publish(payload("training", step=step))
    assert len(warnings) == 1 and "cannot write" in warnings[0]
    write_file(tmp_path / "ok.json", {"phase": "training"})
    assert json.loads((tmp_path / "ok.json").read_text()) == {"phase": "training"}


def test_no_sink_no_work() -> None:
    publisher = Publisher({})
    assert not publisher.active
    publisher.publish(TRAINING)
    publisher.close()
    assert publisher._thread is None


def state(step: int, max_steps: int = 100, zero: bool = True) -> TrainerState:
    return TrainerState(global_step=step, max_steps=max_steps, epoch=step / 50, is_world_process_zero=zero)


def test_the_callback_publishes_the_log_line_with_an_eta_from_the_steps_since_its_first(tmp_path: Path) -> None:
    target = tmp_path / "p.json"
    now = [100.0]
    callback = ProgressCallback(Publisher({"KUBETUNE_PROGRESS_FILE": str(target)}), clock=lambda: now[0])
    logs = {"loss": 2.5, "learning_rate": 1e-4, "tokens_per_second": 900.0, "tokens_trained": 4096.0, "grad_norm": 1.0}
    callback.on_log(None, state(10), None, logs=logs)
    first = json.loads(target.read_text())
    assert first["eta_seconds"] is None and first["mfu"] is None  # one point: no rate yet; MFU not measured
    now[0] += 30.0  # 10 more steps in 30 s: 80 left at 3 s each
    callback.on_log(None, state(20), None, logs=logs | {"mfu": 0.2})
    doc = json.loads(target.read_text())
    assert doc | {"updated": 0} == {"phase": "training", "step": 20, "total_steps": 100, "epoch": 0.4,
                                    "trained_tokens": 4096, "tokens_per_second": 900.0, "eta_seconds": 240.0,
                                    "loss": 2.5, "learning_rate": 1e-4, "mfu": 0.2, "detail": None, "updated": 0}
    callback.on_log(None, state(25), None, logs={"eval_loss": 2.0})  # an eval line: not a training step's
    assert json.loads(target.read_text())["step"] == 20
    callback.on_log(None, state(30, zero=False), None, logs=logs)  # other ranks never publish
    assert json.loads(target.read_text())["step"] == 20
    callback.on_train_end(None, state(100), None)
    last = json.loads(target.read_text())
    assert (last["step"], last["eta_seconds"], last["epoch"]) == (100, 0.0, 2.0)


class Api:
    """A stand-in API server for the Job patch: answers each PATCH with `code` after `delay` seconds."""

    def __init__(self) -> None:
        self.code, self.delay, self.seen = 200, 0.0, []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(api.delay)
                api.seen.append({"path": self.path, "type": self.headers["Content-Type"],
                                 "auth": self.headers["Authorization"], "body": body})
                data = json.dumps({"kind": "Status", "message": "nope"} if api.code >= 400 else {}).encode()
                self.send_response(api.code)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def api() -> Iterator[Api]:
    found = Api()
    threading.Thread(target=found.server.serve_forever, daemon=True).start()
    yield found
    found.server.shutdown()
    found.server.server_close()


@pytest.fixture
def token_dir(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text("pod-token\n")
    (tmp_path / "namespace").write_text("ml")
    return tmp_path


def test_the_job_patch_is_a_merge_patch_of_one_annotation(api: Api, token_dir: Path) -> None:
    publisher = Publisher({"KUBETUNE_PROGRESS_JOB": "bot-x1"}, token_dir=token_dir, server=api.url)
    publisher.publish(TRAINING)
    publisher.close()
    assert api.seen == [{"path": "/apis/batch/v1/namespaces/ml/jobs/bot-x1", "type": "application/merge-patch+json",
                         "auth": "Bearer pod-token",
                         "body": {"metadata": {"annotations": {ANNOTATION: json.dumps(TRAINING)}}}}]


def test_a_slow_or_refusing_api_server_never_holds_training(api: Api, token_dir: Path) -> None:
    api.code, api.delay = 403, 0.5
    warnings: list[str] = []
    publisher = Publisher({"KUBETUNE_PROGRESS_JOB": "bot-x1"}, token_dir=token_dir, server=api.url, every=0.0,
                          warn=warnings.append)
    started = time.perf_counter()
    for step in range(20):
        publisher.publish(payload("training", step=step))
    assert time.perf_counter() - started < 0.2  # the patches are sent by a thread
    time.sleep(1.2)
    publisher.publish(payload("training", step=99))
    publisher.close()
    assert len(api.seen) >= 2 and api.seen[-1]["body"]["metadata"]["annotations"][ANNOTATION].find('"step": 99') > 0
    assert len(warnings) == 1 and "cannot annotate Job ml/bot-x1 (HTTP 403" in warnings[0]  # said once
    assert publisher.sent == []


def test_an_unreachable_api_server_is_warned_once_and_close_does_not_hang(token_dir: Path) -> None:
    warnings: list[str] = []
    publisher = Publisher({"KUBETUNE_PROGRESS_JOB": "bot-x1"}, token_dir=token_dir, server="http://127.0.0.1:9",
                          every=0.0, warn=warnings.append)
    publisher.publish(TRAINING)
    started = time.perf_counter()
    publisher.close(timeout=5.0)
    assert time.perf_counter() - started < 6.0
    assert len(warnings) == 1 and "cannot reach the API server" in warnings[0]


def test_the_export_publishes_its_phase_and_sends_the_last_on_close(api: Api, token_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from trainer.export.run import Export
    from trainer.spec.io import spec_from_dict

    target = tmp_path / "export-progress.json"
    monkeypatch.setenv("KUBETUNE_PROGRESS_FILE", str(target))
    spec = spec_from_dict({"name": "bot", "base_model": "org/model", "data": {"train": "train.jsonl"},
                           "output": {"uri": "out"}, "export": {"gguf": ["q4_k_m"]}})
    export = Export(spec, tmp_path)
    export.progress = Publisher({"KUBETUNE_PROGRESS_FILE": str(target), "KUBETUNE_PROGRESS_JOB": "bot-x1-export"},
                                token_dir=token_dir, server=api.url)  # as the chart's env makes it, at this server
    for detail in ("merging the adapter", "converting q4_k_m", "verifying q4_k_m"):
        export.phase(detail)
        assert progress_line(parse_progress(target.read_text())) == f"export: {detail}"
        until = time.monotonic() + 10
        while not api.seen and time.monotonic() < until:  # the first patch goes at once
            time.sleep(0.02)
    export.progress.close()
    sent = [json.loads(s["body"]["metadata"]["annotations"][ANNOTATION])["detail"] for s in api.seen]
    assert sent == ["merging the adapter", "verifying q4_k_m"]  # the first at once, the last on close (15 s pace)
