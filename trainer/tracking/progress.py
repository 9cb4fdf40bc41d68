"""Live progress that needs no tracking server: one small JSON document, rewritten as the job moves on.

Rank 0 of the training job publishes it at every logging step (`ProgressCallback`,
trainer/tracking/progress_callback.py), the export job at each of its phases (trainer/export/run.py):

    {"phase": "training", "step": 120, "total_steps": 2000, "epoch": 0.4, "trained_tokens": 393216,
     "tokens_per_second": 3200.0, "eta_seconds": 3720.0, "loss": 1.23, "learning_rate": 0.0002, "mfu": 0.41,
     "detail": null, "updated": 1733390000.5}

(`phase` "export" with a `detail` such as "converting q4_k_m", "verifying q4_k_m", "registering"; a number not
measured is null). Where it goes, from the environment:

- `KUBETUNE_PROGRESS_FILE`: this file, replaced atomically (a temporary file, then `os.replace`): the local
  runner sets it, and `launch status` reads it;
- `KUBETUNE_PROGRESS_JOB`: the annotation `kubetune.io/progress` of this Job, in the namespace of the projected
  ServiceAccount token the chart mounts (as trainer/train/start_export.py finds it), by a JSON merge patch; the
  chart's Role allows `patch` on the training and export Jobs by name and nothing else (charts/kubetune/templates/
  rbac.yaml). `launch status` and `launch list` read it with the Job: no exec into a pod, no tracking server.

Publishing never stops or slows the job: patches are sent by a background thread, at most one every
`PATCH_EVERY` seconds (the latest document; the last one of the job always, on `close`), each with a short
timeout; the first failure of each sink is warned once, and the job goes on. Stdlib only: the export imports it too.
"""

from __future__ import annotations

import json
import os
import ssl
import threading
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trainer import say as out
from trainer.train.start_export import TOKEN_DIR, api_server, failure_reason

ANNOTATION = "kubetune.io/progress"
FILE_ENV, JOB_ENV = "KUBETUNE_PROGRESS_FILE", "KUBETUNE_PROGRESS_JOB"
PATCH_EVERY = 15.0  # seconds: at most one patch of the Job per this long
TIMEOUT = 5.0  # seconds for one patch
FIELDS = ("phase", "step", "total_steps", "epoch", "trained_tokens", "tokens_per_second", "eta_seconds", "loss",
          "learning_rate", "mfu", "detail", "updated")


def payload(phase: str, *, detail: str | None = None, updated: float | None = None, **numbers: float | None
            ) -> dict[str, Any]:
    """The document: every field of FIELDS, null where not given. `numbers`: step, total_steps, epoch,
    trained_tokens, tokens_per_second, eta_seconds, loss, learning_rate, mfu."""
    unknown = set(numbers) - set(FIELDS)
    if unknown:
        raise TypeError(f"not a progress field: {', '.join(sorted(unknown))}")
    doc: dict[str, Any] = dict.fromkeys(FIELDS)
    for key, value in numbers.items():
        doc[key] = None if value is None else (int(value) if key in ("step", "total_steps", "trained_tokens")
                                               else float(value))
    doc.update(phase=phase, detail=detail, updated=time.time() if updated is None else updated)
    return doc


def write_file(path: Path, doc: dict[str, Any]) -> None:
    """`doc` as `path`, atomically: a reader sees the previous document or this one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(doc), encoding="utf-8")
    os.replace(temporary, path)


class Publisher:
    """Where this process publishes its progress (see the top); `publish` returns at once."""

    def __init__(self, env: Mapping[str, str] | None = None, token_dir: Path = TOKEN_DIR, server: str | None = None,
                 every: float = PATCH_EVERY, warn: Callable[[str], None] = out.warn):
        env = os.environ if env is None else env
        self.file = Path(env[FILE_ENV]) if env.get(FILE_ENV) else None
        self.job = env.get(JOB_ENV) or None
        self.env, self.token_dir, self.server, self.every, self.warn = dict(env), token_dir, server, every, warn
        self.warned: set[str] = set()
        self.sent: list[dict[str, Any]] = []  # the documents the API server took, in order
        self._latest: dict[str, Any] | None = None
        self._closing = False
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self.file is not None or self.job is not None

    def publish(self, doc: dict[str, Any]) -> None:
        if self.file is not None:
            try:
                write_file(self.file, doc)
            except OSError as e:
                self._warn_once("file", f"progress: cannot write {self.file} ({e}); training goes on without it")
        if self.job is None:
            return
        with self._wake:
            self._latest = doc
            if self._thread is None and not self._closing:
                self._thread = threading.Thread(target=self._patcher, name="kubetune-progress", daemon=True)
                self._thread.start()
            self._wake.notify()

    def close(self, timeout: float = 2 * TIMEOUT) -> None:
        """Send the latest document now (past the rate limit) and stop; waits at most `timeout` seconds."""
        with self._wake:
            self._closing = True
            self._wake.notify()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _patcher(self) -> None:
        last = float("-inf")
        while True:
            with self._wake:
                while self._latest is None and not self._closing:
                    self._wake.wait()
                while not self._closing and time.monotonic() - last < self.every:
                    self._wake.wait(self.every - (time.monotonic() - last))
                doc, self._latest = self._latest, None
                closing = self._closing
            if doc is not None:
                last = time.monotonic()
                self._patch(doc)
            if closing:
                return

    def _patch(self, doc: dict[str, Any]) -> None:
        namespace = "<namespace>"
        try:
            namespace = (self.token_dir / "namespace").read_text(encoding="utf-8").strip() or namespace
            token = (self.token_dir / "token").read_text(encoding="utf-8").strip()  # renewed hourly: read each time
            base = self.server or api_server(self.env)
            context = ssl.create_default_context(cafile=str(self.token_dir / "ca.crt")) \
                if base.startswith("https") else None
            body = json.dumps({"metadata": {"annotations": {ANNOTATION: json.dumps(doc)}}}).encode()
            request = urllib.request.Request(
                f"{base.rstrip('/')}/apis/batch/v1/namespaces/{namespace}/jobs/{self.job}", data=body, method="PATCH",
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json",
                         "Accept": "application/json"})
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as resp:
                resp.read()
            self.sent.append(doc)
        except Exception as e:  # never fails the job: said once, then tried again with the next document
            self._warn_once("job", f"progress: cannot annotate Job {namespace}/{self.job} ({failure_reason(e)}); `launch "
                            f"status` shows no live progress until it can, the job goes on")

    def _warn_once(self, sink: str, message: str) -> None:
        if sink not in self.warned:
            self.warned.add(sink)
            self.warn(message)
