"""A submission's MLflow run, read over MLflow's REST API with the standard library (no mlflow import).

The trainer names its run after the submission (`KUBETUNE_JOB_NAME`) in the spec's experiment
(trainer/tracking/tracker.py). From the run: the last value of each metric; progress and an ETA from the
`loss` history (step and timestamp of each point) against `training.max_steps`, or from `epoch`
against `training.epochs`; and the model versions the export registered from it.

Connection settings as MLflow's own client reads them (mlflow/utils/credentials.py, rest_utils.py):
MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (each else from ~/.mlflow/credentials) for basic
auth, which wins over MLFLOW_TRACKING_TOKEN (a bearer token); MLFLOW_TRACKING_INSECURE_TLS=true (no
certificate check) or MLFLOW_TRACKING_SERVER_CERT_PATH (the CA bundle to trust), never both; and
MLFLOW_TRACKING_CLIENT_CERT_PATH (a PEM file with the client certificate and its key). Transient failures
(connection refused or reset, timeouts, 408, 429, 500, 502, 503, 504: MLflow's list) are retried with
exponential backoff, honouring Retry-After, within RETRY_SECONDS per client; other answers are not.
"""

from __future__ import annotations

import base64
import configparser
import http.client
import json
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher.errors import UserError

TIMEOUT = 10.0  # seconds for one request
RETRY_SECONDS = 20.0  # no retry starts later than this after the client was made
BACKOFF_FIRST, BACKOFF_MOST = 0.5, 8.0  # seconds before the first retry, doubling up to the most
TRANSIENT = frozenset({408, 429, 500, 502, 503, 504})
SHOWN = ("loss", "eval_loss", "learning_rate", "grad_norm", "tokens_per_second", "epoch")
CREDENTIALS_FILE = "~/.mlflow/credentials"
AUTH_VARS = "MLFLOW_TRACKING_TOKEN (a bearer token), or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
TLS_VARS = ("set MLFLOW_TRACKING_SERVER_CERT_PATH to the CA bundle that signed the server's certificate, or "
            "MLFLOW_TRACKING_INSECURE_TLS=true to skip the check")


class TrackingUnreachable(Exception):
    """The tracking server did not answer, or answered with an error: one line for the user."""


class TrackingRefused(UserError, TrackingUnreachable):
    """The server is there but will not serve this client as set up here (credentials, certificates): the
    message names the variables to set. A TrackingUnreachable too, so that progress stays optional."""


class _Transient(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.message, self.retry_after = message, retry_after


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
        auth, self.sent = credentials()
        self.headers = {"Content-Type": "application/json"} | auth
        self.context = tls_context() if self.uri.startswith("https:") else None
        self.deadline = time.monotonic() + RETRY_SECONDS

    def _request(self, path: str, params: dict[str, Any] | None = None, body: dict[str, Any] | None = None) -> Any:
        """The answer's JSON; None for RESOURCE_DOES_NOT_EXIST. Transient failures are retried (see the top)."""
        url = f"{self.uri}/api/2.0/mlflow/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = json.dumps(body).encode() if body is not None else None
        tries = 0
        while True:
            tries += 1
            try:
                return self._once(urllib.request.Request(url, data, self.headers), path)
            except _Transient as e:
                wait = min(BACKOFF_MOST, BACKOFF_FIRST * 2 ** (tries - 1))
                wait = max(wait, min(e.retry_after or 0.0, BACKOFF_MOST * 4))
                if time.monotonic() + wait > self.deadline:
                    raise TrackingUnreachable(f"{e.message} ({tries} tr{'ies' if tries > 1 else 'y'})") from None
                time.sleep(wait)

    def _once(self, request: urllib.request.Request, path: str) -> Any:
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT, context=self.context) as r:
                return json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", errors="replace")[:300]
            if e.code == 404 and "RESOURCE_DOES_NOT_EXIST" in detail:
                return None
            said = f"MLflow at {self.uri} answered {e.code} to {path}: {detail}"
            if e.code in (401, 403):
                raise TrackingRefused(refused_message(self.uri, e.code, path, self.sent)) from None
            if e.code in TRANSIENT:
                raise _Transient(said, _seconds(e.headers.get("Retry-After"))) from None
            raise TrackingUnreachable(said) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as e:
            reason = getattr(e, "reason", e)
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise TrackingRefused(f"MLflow at {self.uri}: its TLS certificate is not trusted here "
                                      f"({reason.verify_message}): {TLS_VARS}") from None
            said = f"MLflow at {self.uri} is unreachable from here ({reason})"
            if isinstance(reason, (ConnectionError, TimeoutError, http.client.IncompleteRead)) and \
                    not isinstance(reason, ssl.SSLError):
                raise _Transient(said) from None
            raise TrackingUnreachable(said) from None

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
        """The model versions registered from the run, each with its aliases (the search leaves them out) and its
        `kubetune.*` tags (a LoRA GGUF's gate figures and the shared base it needs: launcher/exports.py)."""
        found = (self._request("model-versions/search", {"filter": f"run_id = '{run_id}'"}) or {}).get("model_versions")
        aliases: dict[tuple[str, str], list[str]] = {}
        for name in {v["name"] for v in found or []}:
            model = (self._request("registered-models/get", {"name": name}) or {}).get("registered_model") or {}
            for a in model.get("aliases") or []:
                aliases.setdefault((name, a["version"]), []).append(a["alias"])
        return [{"name": v["name"], "version": v["version"], "aliases": aliases.get((v["name"], v["version"]), []),
                 "source": v.get("source", ""),
                 "tags": {t["key"]: t.get("value") for t in v.get("tags") or [] if t["key"].startswith("kubetune.")}}
                for v in found or []]


def credentials() -> tuple[dict[str, str], str]:
    """(the Authorization header, what it is in words). MLflow's order: basic auth when both the username and the
    password are known (each from the environment, else from ~/.mlflow/credentials), else the token."""
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if not (user and password):
        saved = configparser.ConfigParser()
        saved.read(Path(CREDENTIALS_FILE).expanduser())
        section = saved["mlflow"] if saved.has_section("mlflow") else {}
        user = user or section.get("mlflow_tracking_username")
        password = password or section.get("mlflow_tracking_password")
    if user and password:
        basic = base64.standard_b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {basic}"}, f"basic auth as {user}"
    if token := os.environ.get("MLFLOW_TRACKING_TOKEN"):
        return {"Authorization": f"Bearer {token}"}, "the bearer token in MLFLOW_TRACKING_TOKEN"
    return {}, ""


def refused_message(uri: str, code: int, path: str, sent: str) -> str:
    """401/403 in one line, with the variables that set the credentials."""
    if code == 401:
        told = f"it did not accept {sent}" if sent else "no credentials are set here"
        return f"MLflow at {uri} answered 401 Unauthorized to {path}: {told}; set {AUTH_VARS}"
    told = f"{sent} may not read this" if sent else "no credentials are set here"
    return f"MLflow at {uri} answered 403 Forbidden to {path}: {told}; set {AUTH_VARS} of a user with read access"


def insecure_tls() -> bool:
    raw = os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "false")
    if raw.lower() not in ("true", "false", "1", "0"):
        raise TrackingRefused(f"MLFLOW_TRACKING_INSECURE_TLS={raw!r}: one of true, false, 1, 0 (as for MLflow)")
    return raw.lower() in ("true", "1")


def tls_context() -> ssl.SSLContext:
    """An SSL context as MLflow's client sets `requests` up from the environment."""
    ca, client = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH"), os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH")
    if insecure_tls() and ca:
        raise TrackingRefused("MLFLOW_TRACKING_INSECURE_TLS and MLFLOW_TRACKING_SERVER_CERT_PATH are both set: "
                              "set only one (as MLflow's client wants)")
    try:
        if ca:
            context = ssl.create_default_context(**({"capath": ca} if Path(ca).is_dir() else {"cafile": ca}))
        else:
            context = ssl.create_default_context()
    except (OSError, ssl.SSLError) as e:
        raise TrackingRefused(f"MLFLOW_TRACKING_SERVER_CERT_PATH={ca}: not a readable CA bundle ({e})") from None
    if insecure_tls():
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if client:
        try:
            context.load_cert_chain(client)
        except (OSError, ssl.SSLError) as e:
            raise TrackingRefused(f"MLFLOW_TRACKING_CLIENT_CERT_PATH={client}: not a PEM file with a certificate "
                                  f"and its key ({e})") from None
    return context


def _seconds(retry_after: str | None) -> float | None:
    try:
        return max(0.0, float(retry_after)) if retry_after else None
    except ValueError:  # an HTTP date: the backoff decides
        return None


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
