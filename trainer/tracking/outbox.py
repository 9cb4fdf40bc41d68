"""Metrics on their way to MLflow: sent by a background thread, kept while the server is unreachable.

Training never waits for MLflow and never fails because of it. `Outbox.put` only appends to a
list; a daemon thread opens the run when it can (creating it, or reattaching a resumed job to its
run) and sends the metrics in order with `log_batch`, each with the step and timestamp it was
logged at. When a request fails the metrics stay queued and the thread retries with backoff
(1 s doubling to 30 s), saying once that MLflow is unreachable and once that it is back. A
retried batch that the server had in fact stored is no duplicate: MLflow keeps one copy of a
metric with the same key, value, step and timestamp. Errors that no retry can fix (the run
deleted, a value refused) drop that batch with a message; `close` returns what was never sent so
that the caller writes it next to the outputs.

Artifacts and tags (`Outbox.call`) go through the same queue, in order with the metrics: logged once
the run exists, retried the same way, so an adapter saved while MLflow is down reaches the run when
it answers again, within the job's `tracking.flush_timeout`. One still queued then is named by `close`.

On a reattached run, metrics at or before the last step MLflow already has for their key are
skipped: a job that crashed after step 13 and resumes from its step-10 checkpoint trains steps
11-13 again, and logs them once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.entities import Metric

BATCH = 1000  # MLflow's limit of metrics per log_batch
PERMANENT = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE", "PERMISSION_DENIED"}
MAX_DELAY = 30.0


@dataclass(frozen=True)
class Call:
    """An artifact or tag for the run: `send(run_id)` logs it; `what` names it in messages."""

    what: str
    send: Callable[[str], Any]


def permanent(error: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(error, MlflowException) and error.error_code in PERMANENT


class Outbox:
    """One run's metrics queue and the thread that sends it (see the module docstring)."""

    def __init__(self, client: Any, open_run: Callable[[], tuple[str, dict[str, int]]], say: Callable[[str], None],
                 uri: str):
        self.client = client
        self.open_run = open_run  # -> (run id, {metric key: last step the run already has})
        self.say = say
        self.uri = uri
        self.run_id: str | None = None
        self.logged: dict[str, int] = {}
        self.pending: list[Metric | Call] = []
        self.dropped: list[Metric] = []
        self.sent = 0
        self._cond = threading.Condition()
        self._closing = False
        self._stopped = False
        self._closed = threading.Event()  # wakes a backoff wait: the job is ending
        self._down_since: float | None = None
        self._thread = threading.Thread(target=self._loop, name="mlflow-outbox", daemon=True)

    def start(self, run_id: str | None = None, logged: dict[str, int] | None = None) -> Outbox:
        """Start sending; `run_id` when the run is already open (else the thread opens it)."""
        self.run_id, self.logged = run_id, dict(logged or {})
        self._thread.start()
        return self

    def put(self, metrics: list[Metric | Call]) -> None:
        with self._cond:
            self.pending.extend(metrics)
            self._cond.notify_all()

    def call(self, what: str, send: Callable[[str], Any]) -> None:
        """Queue `send(run_id)` behind the metrics logged so far."""
        self.put([Call(what, send)])

    def unsent(self) -> list[Metric]:
        with self._cond:
            return [m for m in self.pending if not isinstance(m, Call)]

    def _wanted(self, batch: list[Metric]) -> list[Metric]:
        return [m for m in batch if m.step > self.logged.get(m.key, -1)]

    def _head(self) -> list[Metric | Call]:
        """The oldest call alone, or the oldest metrics up to the next call (at most BATCH)."""
        with self._cond:
            if self.pending and isinstance(self.pending[0], Call):
                return self.pending[:1]
            batch: list[Metric | Call] = []
            for m in self.pending[:BATCH]:
                if isinstance(m, Call):
                    break
                batch.append(m)
            return batch

    def _send_once(self) -> bool:
        """One attempt at opening the run and sending the oldest batch or call; True when the queue moved."""
        batch = self._head()
        if self.run_id is None:
            self.run_id, self.logged = self.open_run()
        from mlflow.exceptions import MlflowException

        if batch and isinstance(batch[0], Call):
            try:
                batch[0].send(self.run_id)
            except MlflowException as e:
                if not permanent(e):
                    raise
                self.say(f"MLflow refused {batch[0].what} of run {self.run_id}: {e.message[:300]}; "
                         "it is in the job's output")
        elif wanted := self._wanted(batch):  # type: ignore[arg-type]
            try:
                self.client.log_batch(self.run_id, metrics=wanted)
            except MlflowException as e:
                if not permanent(e):
                    raise
                self.say(f"MLflow refused {len(wanted)} metric(s) of run {self.run_id}: {e.message[:300]}; "
                         "they are written to mlflow-unsent.jsonl at the end")
                self.dropped.extend(wanted)
            else:
                self.sent += len(wanted)
        with self._cond:
            del self.pending[: len(batch)]
            self._cond.notify_all()
        return True

    def _loop(self) -> None:
        delay = 1.0
        while True:
            with self._cond:
                while not self.pending and not self._closing:
                    self._cond.wait()
                if self._stopped or (self._closing and not self.pending):
                    return
            try:
                self._send_once()
            except Exception as e:  # network, 5xx, timeouts: keep the metrics, try again later
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                    self.say(f"MLflow at {self.uri} unreachable ({first}): training goes on, metrics are kept "
                             "and sent when it answers")
                if self._closed.is_set():  # ending: retry every second until close() gives up
                    time.sleep(1.0)
                else:
                    self._closed.wait(timeout=delay)
                delay = min(delay * 2, MAX_DELAY)
                continue
            if self._down_since is not None:
                down = time.monotonic() - self._down_since
                self._down_since = None
                self.say(f"MLflow at {self.uri} answers again after {down:.0f}s: sending the kept metrics")
            delay = 1.0

    def close(self, timeout: float) -> list[Metric]:
        """Wait up to `timeout` seconds for the queue to drain; returns the metrics not sent (dropped included),
        and names each artifact or tag not logged."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._closed.set()
        with self._cond:
            while self.pending and time.monotonic() < deadline:
                self._cond.wait(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            self._stopped = True  # nothing is sent after this: what is left is the caller's
            left = [m for m in self.pending if not isinstance(m, Call)]
            calls = [c.what for c in self.pending if isinstance(c, Call)]
        if calls:
            self.say(f"MLflow: could not log {', '.join(calls)} to {self.uri} in time; it is in the job's output")
        return self.dropped + left
