"""A submission's MLflow run, read over MLflow's REST API with the standard library (no mlflow import).

The trainer names its run after the submission (`KUBETUNE_JOB_NAME`) in the spec's experiment
(trainer/tracking/tracker.py). From the run: the last value of each metric; progress and an ETA from the
`loss` history (step and timestamp of each point) against `training.max_steps`, or from `epoch`
against `training.epochs`; and the model versions the export registered from it.
Credentials as MLflow's own client reads them: MLFLOW_TRACKING_TOKEN, or
MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

TIMEOUT = 10.0
SHOWN = ("loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second", "epoch")


class TrackingUnreachable(Exception):
    """The tracking server did not answer, or answered with an error: one line for the user."""


@dataclass
class Progress:
    run_id: str
    run_status: str  # RUNNING | FINISHED | FAILED | KILLED
    tracking_uri: str
    metrics: dict[str, float]  # the last value of each metric
    step: int | None
    total: float | None  # max_steps, or epochs
    done: float | None  # the step, or the epoch reached
    unit: str  # "steps" | "epochs"
    eta_seconds: float | None
    registered: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.done / self.total) if self.done is not None and self.total else None

    @property
    def registered_model(self) -> str | None:
        """`models:/<name>@<alias>` of the aliased version (the spec's alias), else the newest version."""
        if not self.registered:
            return None
        aliased = [v for v in self.registered if v.get("aliases")]
        if aliased:
            return f"models:/{aliased[0]['name']}@{aliased[0]['aliases'][0]}"
        newest = max(self.registered, key=lambda v: int(v["version"]))
        return f"models:/{newest['name']}/{newest['version']}"


class MlflowRest:
    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")

    def _request(self, path: str, params: dict[str, Any] | None = None, body: dict[str, Any] | None = None) -> Any:
        url = f"{self.uri}/api/2.0/mlflow/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        headers = {"Content-Type": "application/json"} | _auth()
        data = json.dumps(body).encode() if body is not None else None
        try:
            with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=TIMEOUT) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", errors="replace")[:300]
            if e.code == 404 and "RESOURCE_DOES_NOT_EXIST" in detail:
                return None
            raise TrackingUnreachable(f"MLflow at {self.uri} answered {e.code} to {path}: {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise TrackingUnreachable(f"MLflow at {self.uri} is unreachable from here ({reason})") from None

    def find_run(self, experiment: str, run_name: str) -> dict[str, Any] | None:
        found = self._request("experiments/get-by-name", {"experiment_name": experiment})
        if not found:
            return None
        exp_id = found["experiment"]["experiment_id"]
        quoted = run_name.replace("'", "\\'")
        runs = self._request("runs/search", body={
            "experiment_ids": [exp_id], "filter": f"attributes.run_name = '{quoted}'",
            "max_results": 1, "order_by": ["attributes.start_time DESC"]})
        return ((runs or {}).get("runs") or [None])[0]

    def history(self, run_id: str, key: str) -> list[dict[str, Any]]:
        points = (self._request("metrics/get-history", {"run_id": run_id, "metric_key": key}) or {}).get("metrics")
        return sorted(points or [], key=lambda m: (int(m.get("step", 0)), int(m["timestamp"])))

    def versions(self, run_id: str) -> list[dict[str, Any]]:
        """The model versions registered from the run, each with its aliases (the search leaves them out)."""
        found = (self._request("model-versions/search", {"filter": f"run_id = '{run_id}'"}) or {}).get("model_versions")
        aliases: dict[tuple[str, str], list[str]] = {}
        for name in {v["name"] for v in found or []}:
            model = (self._request("registered-models/get", {"name": name}) or {}).get("registered_model") or {}
            for a in model.get("aliases") or []:
                aliases.setdefault((name, a["version"]), []).append(a["alias"])
        return [{"name": v["name"], "version": v["version"], "aliases": aliases.get((v["name"], v["version"]), []),
                 "source": v.get("source", "")} for v in found or []]


def _auth() -> dict[str, str]:
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {token}"}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
    return {}


def _rate(points: list[dict[str, Any]], position: str) -> tuple[float | None, float | None]:
    """(where the run is, units per second) from a metric's history; position is "step" or "value"."""
    if not points:
        return None, None
    first, last = points[0], points[-1]
    where = float(last[position])
    seconds = (int(last["timestamp"]) - int(first["timestamp"])) / 1000
    moved = where - float(first[position])
    return where, (moved / seconds if seconds > 0 and moved > 0 else None)


def progress(uri: str, experiment: str, run_name: str, max_steps: int | None, epochs: float | None) -> Progress | None:
    """The run's progress; None when the trainer has not created the run yet. TrackingUnreachable on errors."""
    mlflow = MlflowRest(uri)
    run = mlflow.find_run(experiment, run_name)
    if run is None:
        return None
    info, data = run["info"], run.get("data") or {}
    metrics = {m["key"]: float(m["value"]) for m in data.get("metrics") or []}
    steps = {m["key"]: int(m.get("step", 0)) for m in data.get("metrics") or []}
    if max_steps:
        done, rate = _rate(mlflow.history(info["run_id"], "loss"), "step")
        total, unit = float(max_steps), "steps"
    else:
        done, rate = _rate(mlflow.history(info["run_id"], "epoch"), "value")
        total, unit = epochs, "epochs"
    finished = info.get("status") != "RUNNING"
    eta = (total - done) / rate if rate and total and done is not None and not finished else None
    return Progress(info["run_id"], info.get("status", ""), uri, {k: v for k, v in metrics.items() if k in SHOWN},
                    steps.get("loss"), total, done, unit, max(eta, 0.0) if eta is not None else None,
                    mlflow.versions(info["run_id"]) if finished else [])
