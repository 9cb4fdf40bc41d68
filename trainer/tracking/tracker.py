"""What a run reports: progress lines, MLflow (rank 0 only), and trained tokens per second.

MLflow store: `tracking.mlflow_uri`, else a local `sqlite:///` store — `<output>/mlflow.db`
when the output is a local folder, or `<staging>/mlflow/` when it is `s3://` (copied next to
the outputs at the end). Params are the resolved spec flattened; metrics come from the
Trainer's logs plus the data statistics, and MLflow's system metrics (trainer/tracking/system.py);
artifacts are added by train.py when it saves.
Metrics are sent by a background thread that keeps them while MLflow is unreachable
(trainer/tracking/outbox.py); a resumed job reattaches to its run.

mlflow is imported only where it is used: by the active (rank 0) `Tracker` and the functions it calls. Importing
this module, or a `Tracker` on the other ranks, never imports it (tests/unit/test_train.py checks that).
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import Trainer, TrainerCallback

from trainer import say as out
from trainer.spec.io import dump_spec, flatten, spec_hash
from trainer.spec.job import JobSpec
from trainer.tracking import system
from trainer.tracking.log_lines import numeric, trained_tokens
from trainer.tracking.outbox import Outbox
from trainer.tracking.speed import Speed

if TYPE_CHECKING:
    from mlflow.entities import Metric

BATCH = 100  # MLflow takes at most 100 params per request
TRUNCATED = "...[truncated: full value in the spec.yaml artifact]"


def job_name(spec: JobSpec) -> str:
    """The submission's unique job name when the launcher sets it, else the spec's name."""
    return os.environ.get("KUBETUNE_JOB_NAME") or spec.name


def mlflow_params(spec: JobSpec) -> tuple[dict[str, str], list[str]]:
    """Flattened spec as MLflow params; values over MLflow's length limit are cut and named."""
    from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

    params, cut = {}, []
    for key, value in flatten(spec).items():
        if len(value) > MAX_PARAM_VAL_LENGTH:
            value = value[: MAX_PARAM_VAL_LENGTH - len(TRUNCATED)] + TRUNCATED
            cut.append(key)
        params[key] = value
    return params, cut


class Tracker:
    """One MLflow run, written from rank 0 only; every method is a no-op on other ranks.

    Metrics go through an `Outbox` (trainer/tracking/outbox.py): training never waits for MLflow and
    never fails because of it. `run_id` given: a resumed job reattaches to its run (params and
    spec are there already; metrics it already has are not logged twice)."""

    def __init__(self, spec: JobSpec, store_dir: Path, active: bool, run_id: str | None = None,
                 resumed_step: int | None = None):
        self.active = active
        self.spec = spec
        self.run_id = run_id
        self.resumed_step = resumed_step
        self.note = ""
        self._fresh = run_id is None  # a new run: its params and spec are logged once it exists
        self.system = False  # MLflow's system metrics monitor runs (trainer/tracking/system.py)
        if spec.tracking.mlflow_uri:
            self.uri, self.artifacts = spec.tracking.mlflow_uri, None
        else:
            self.uri, self.artifacts = f"sqlite:///{store_dir.resolve() / 'mlflow.db'}", (store_dir / "mlartifacts")
            self.note = f"local MLflow store {store_dir} (no tracking.mlflow_uri in the spec)"
        if not active:
            return
        store_dir.mkdir(parents=True, exist_ok=True)
        if self.uri.startswith(("http://", "https://")):
            # The outbox retries for as long as it takes; MLflow's own 7 retries (minutes) would only delay that.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        from mlflow import MlflowClient

        self.client = MlflowClient(self.uri)
        self.outbox = Outbox(self.client, self._open, say, self.uri)
        try:
            opened = self._open()
        except Exception as e:
            if not self.uri.startswith(("http://", "https://")):
                raise  # a local store that cannot be written is a real problem
            say(f"MLflow at {self.uri} unreachable ({str(e).splitlines()[0][:200]}): training starts anyway; the run "
                "is created, and the metrics sent, when it answers")
            self.outbox.start()
        else:
            self.outbox.start(*opened)
            self.system = system.start(spec.tracking, self.uri, opened[0], say)  # CPU, memory, GPU: system/*

    def _open(self) -> tuple[str, dict[str, int]]:
        """Create the run (experiment, tags, params, spec.yaml), or reattach to it; -> (run id, last steps)."""
        from mlflow.entities import Param, RunTag
        from mlflow.exceptions import MlflowException

        spec, client = self.spec, self.client
        if self.run_id is None:
            exp = client.get_experiment_by_name(spec.experiment)
            if exp is None:
                location = self.artifacts.resolve().as_uri() if self.artifacts else None
                exp_id = client.create_experiment(spec.experiment, artifact_location=location)
            else:
                exp_id = exp.experiment_id
            tags = {"kubetune.spec_hash": spec_hash(spec), "kubetune.base_model": spec.base_model,
                    "kubetune.spec_name": spec.name, "kubetune.objective": spec.training.objective,
                    **({"kubetune.parent": spec.adapter.init_from} if spec.adapter.init_from else {})}
            self.run_id = client.create_run(exp_id, run_name=job_name(spec), tags=tags).info.run_id
        if self._fresh:  # retried as a whole when MLflow failed in the middle: nothing of it is lost
            params, cut = mlflow_params(spec)
            items = [Param(k, v) for k, v in params.items()]
            for i in range(0, len(items), BATCH):
                client.log_batch(self.run_id, params=items[i : i + BATCH])
            if cut:
                client.log_batch(self.run_id, tags=[RunTag("kubetune.truncated_params", ",".join(cut))])
            client.log_text(self.run_id, dump_spec(spec), "spec.yaml")
            self._fresh = False
            return self.run_id, {}
        try:
            run = client.get_run(self.run_id)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            say(f"MLflow run {self.run_id} of this job is gone from {self.uri}: logging to a new run")
            self._fresh, self.run_id = True, None
            return self._open()
        if run.info.status != "RUNNING":
            client.update_run(self.run_id, status="RUNNING")
        if self.resumed_step is not None:
            client.set_tag(self.run_id, "kubetune.resumed_from_step", str(self.resumed_step))
        logged = {key: max(m.step for m in client.get_metric_history(self.run_id, key)) for key in run.data.metrics}
        return self.run_id, logged

    def log_metrics(self, metrics: dict[str, float], step: int, timestamp_ms: int | None = None) -> None:
        if not self.active or not metrics:
            return
        from mlflow.entities import Metric

        now = timestamp_ms or int(time.time() * 1000)
        self.outbox.put([Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))])

    def requeue(self, metrics: list[dict[str, Any]]) -> None:
        """Metrics a previous attempt of this job had not sent yet (from its checkpoint)."""
        if self.active and metrics:
            from mlflow.entities import Metric

            self.outbox.put([Metric(m["key"], m["value"], m["timestamp"], m["step"]) for m in metrics])

    def unsent(self) -> list[dict[str, Any]]:
        return [metric_dict(m) for m in self.outbox.unsent()] if self.active else []

    def _artifact(self, what: str, send: Any) -> None:
        """Queued behind the metrics (trainer/tracking/outbox.py): logged once the run exists, retried through an
        outage until the end of the job's `tracking.flush_timeout`; one never logged is named at the end."""
        if self.active:
            self.outbox.call(what, send)

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        self._artifact(artifact_path or local_dir.name,
                       lambda run_id: self.client.log_artifacts(run_id, str(local_dir), artifact_path))

    def log_artifact(self, path: Path) -> None:
        self._artifact(path.name, lambda run_id: self.client.log_artifact(run_id, str(path)))

    def set_tags(self, tags: dict[str, str]) -> None:
        """Tags known once the run has started, e.g. the resolved parent adapter (trainer/model/init_from.py)."""
        self._artifact("tags", lambda run_id: [self.client.set_tag(run_id, k, v) for k, v in tags.items()])

    def log_table(self, table: dict[str, list[str]], name: str) -> None:
        self._artifact(name, lambda run_id: self.client.log_table(run_id, data=table, artifact_file=name))

    def end(self, status: str = "FINISHED", timeout: float | None = None) -> list[dict[str, Any]]:
        """Send what is queued (waiting up to `tracking.flush_timeout`), mark the run; returns the unsent metrics."""
        if not self.active:
            return []
        left = self.outbox.close(self.spec.tracking.flush_timeout if timeout is None else timeout)
        if self.system:
            self.system = system.stop(status)
        if self.run_id is not None:
            try:
                self.client.set_terminated(self.run_id, status=status)
            except Exception as e:
                say(f"MLflow: could not mark run {self.run_id} {status} ({str(e).splitlines()[0][:200]})")
        if left:
            say(f"MLflow: {len(left)} metric(s) could not be sent to {self.uri}")
        return [metric_dict(m) for m in left]


def metric_dict(m: Metric) -> dict[str, Any]:
    return {"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}


def say(message: str) -> None:
    out.say(message)


class MlflowCallback(TrainerCallback):
    """Sends every Trainer log line to MLflow (rank 0 only: the Tracker is inactive elsewhere)."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.tracker.log_metrics(numeric(logs), step=state.global_step)


class MeteredTrainer(Trainer):
    """A Trainer that counts trained tokens (labels != -100) and logs their rate.

    The count is taken as each micro-batch trains (`training_step`), so it is exact (no dataloader
    prefetch), and summed over ranks at each log step (all ranks log). The clock starts when the first
    step's micro-batches have been fetched; evaluations and checkpoint saves are not counted. With a `speed` meter
    (trainer/tracking/speed.py) each log step also has the model's FLOP/s and MFU, and the last log the run's.
    """

    def __init__(self, *args: Any, speed: Speed | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.tokens_trained = 0
        self._pending: torch.Tensor | None = None
        self._since: float | None = None
        self.speed = speed
        if speed is not None:
            self.add_callback(speed)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        if self.speed is not None:  # last: its pause ends after every other callback's save (the upload) is done
            self.remove_callback(self.speed)
            self.add_callback(self.speed)
        return super().train(*args, **kwargs)

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> torch.Tensor:
        if self._since is None:
            self._since = time.perf_counter()
        n = trained_tokens(inputs)
        self._pending = n if self._pending is None else self._pending + n
        if self.speed is not None:
            self.meter(inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    def meter(self, inputs: dict[str, Any]) -> None:
        """The micro-batch's rows for the FLOPs count (a preference trainer lays its batches out otherwise)."""
        assert self.speed is not None
        self.speed.add(inputs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._pending is not None and self._since is not None:
            tokens = int(self.accelerator.reduce(self._pending.to(self.args.device), reduction="sum").item())
            now = time.perf_counter()
            seconds = max(now - self._since - (self.speed.take_paused() if self.speed else 0.0), 1e-9)
            self.tokens_trained += tokens
            logs["tokens_per_second"] = tokens / seconds
            logs["tokens_trained"] = float(self.tokens_trained)
            self._pending, self._since = None, now
            if self.speed is not None:
                counts = self.accelerator.reduce(self.speed.take(self.args.device), reduction="sum")
                logs.update(self.speed.window(counts.tolist(), seconds, self.args.world_size))
        elif "train_runtime" in logs and self.speed is not None:  # the run's end: its whole rates
            counts = self.accelerator.reduce(self.speed.take(self.args.device), reduction="sum").tolist()
            if counts[0] and self._since is not None:  # steps after the last log step count too
                seconds = max(time.perf_counter() - self._since - self.speed.take_paused(), 1e-9)
                self.speed.window(counts, seconds, self.args.world_size)
            logs.update({f"train_{k}": v for k, v in self.speed.summary(self.args.world_size).items()})
        super().log(logs, start_time)


def stats_json(train: Any, eval_: Any | None) -> str:
    def one(s: Any) -> dict[str, Any]:
        return {k: v for k, v in vars(s).items() if isinstance(v, (int, float, str, list, dict)) or v is None}

    return json.dumps({"train": one(train), "eval": one(eval_) if eval_ is not None else None}, indent=2)
