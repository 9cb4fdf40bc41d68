"""trainer/train/start_export.py: rank 0 starts the suspended export Job with one PATCH, against a real HTTP server on
loopback standing in for the API server; a failure never fails training and says how to start it by hand."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from trainer.train import start_export


@dataclass
class Api:
    url: str
    replies: list[tuple[int, dict[str, Any]]]  # served in order; the last one repeats
    seen: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture
def api() -> Iterator[Api]:
    state = Api("", [(200, {"kind": "Job"})])

    class Handler(BaseHTTPRequestHandler):
        def do_PATCH(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.seen.append({"path": self.path, "auth": self.headers["Authorization"],
                               "type": self.headers["Content-Type"], "body": json.loads(body)})
            code, reply = state.replies.pop(0) if len(state.replies) > 1 else state.replies[0]
            data = json.dumps(reply).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def token_dir(tmp_path: Path) -> Path:
    (tmp_path / "token").write_text("pod-token\n")
    (tmp_path / "namespace").write_text("ml")
    (tmp_path / "ca.crt").write_text("")  # not read over plain HTTP
    return tmp_path


def run(api: Api, token_dir: Path, env: dict[str, str]) -> tuple[bool, list[str]]:
    said: list[str] = []
    ok = start_export.start(env, token_dir=token_dir, server=api.url, say=said.append, sleep=lambda s: None)
    return ok, said


def test_it_unsuspends_the_export_job_and_drops_its_owner(api: Api, token_dir: Path) -> None:
    ok, said = run(api, token_dir, {"KUBETUNE_EXPORT_JOB": "sft-abcde-export"})
    assert ok and said == ["[kubetune] started the export Job ml/sft-abcde-export"]
    [req] = api.seen
    assert req["path"] == "/apis/batch/v1/namespaces/ml/jobs/sft-abcde-export"
    assert req["auth"] == "Bearer pod-token" and req["type"] == "application/merge-patch+json"
    assert req["body"] == {"metadata": {"ownerReferences": None}, "spec": {"suspend": False}}


def test_with_a_kueue_queue_it_hands_the_job_to_the_queue(api: Api, token_dir: Path) -> None:
    ok, said = run(api, token_dir, {"KUBETUNE_EXPORT_JOB": "x-export", "KUBETUNE_EXPORT_QUEUE": "team-a"})
    assert ok and "handed to Kueue queue team-a" in said[0]
    assert api.seen[0]["body"] == {"metadata": {"ownerReferences": None,
                                                "labels": {"kueue.x-k8s.io/queue-name": "team-a"}}}  # still suspended


def test_without_an_export_job_it_does_nothing(api: Api, token_dir: Path) -> None:
    assert run(api, token_dir, {}) == (False, []) and api.seen == []


def test_a_refusal_is_one_line_with_the_command_to_start_it_by_hand(api: Api, token_dir: Path) -> None:
    api.replies = [(403, {"kind": "Status", "message": 'jobs.batch "x-export" is forbidden: User cannot patch'})]
    ok, said = run(api, token_dir, {"KUBETUNE_EXPORT_JOB": "x-export"})
    assert not ok and len(said) == 1 and len(api.seen) == 1  # a 403 is not retried
    assert said[0].startswith("[kubetune] warning: could not start the export Job ml/x-export (HTTP 403 ")
    assert "is forbidden: User cannot patch" in said[0] and "training succeeded" in said[0]
    assert said[0].endswith("`kubectl patch job x-export -n ml --type merge "
                            """-p '{"metadata":{"ownerReferences":null},"spec":{"suspend":false}}'`""")


def test_a_busy_api_server_is_retried(api: Api, token_dir: Path) -> None:
    api.replies = [(503, {}), (429, {}), (200, {})]
    ok, _ = run(api, token_dir, {"KUBETUNE_EXPORT_JOB": "x-export"})
    assert ok and len(api.seen) == 3


def test_no_token_no_server_still_never_raises(tmp_path: Path) -> None:
    said: list[str] = []
    ok = start_export.start({"KUBETUNE_EXPORT_JOB": "x-export"}, token_dir=tmp_path / "none", say=said.append)
    assert not ok and "could not start the export Job <namespace>/x-export" in said[0]
    assert "kubectl patch job x-export -n <namespace>" in said[0]
