"""What a run reports: progress lines, MLflow (rank 0 only), and trained tokens per second.

MLflow store: `tracking.mlflow_uri`, else a local `sqlite:///` store — `<output>/mlflow.db`
when the output is a local folder, or `<staging>/mlflow/` when it is `s3://` (copied next to
the outputs at the end). Params are the resolved spec flattened; metrics come from the
Trainer's logs plus the data statistics; artifacts are added by train.py when it saves.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
from transformers import Trainer, TrainerCallback

from trainer.spec import JobSpec
from trainer.spec_io import dump_spec, flatten, spec_hash

BATCH = 100  # MLflow takes at most 100 params per request
TRUNCATED = "...[truncated: full value in the spec.yaml artifact]"


def job_name(spec: JobSpec) -> str:
    """The submission's unique job name when the launcher sets it, else the spec's name."""
    return os.environ.get("KUBETUNE_JOB_NAME") or spec.name


def mlflow_params(spec: JobSpec) -> tuple[dict[str, str], list[str]]:
    """Flattened spec as MLflow params; values over MLflow's length limit are cut and named."""
    params, cut = {}, []
    for key, value in flatten(spec).items():
        if len(value) > MAX_PARAM_VAL_LENGTH:
            value = value[: MAX_PARAM_VAL_LENGTH - len(TRUNCATED)] + TRUNCATED
            cut.append(key)
        params[key] = value
    return params, cut


class Tracker:
    """One MLflow run, written from rank 0; every method is a no-op on other ranks."""

    def __init__(self, spec: JobSpec, store_dir: Path, active: bool):
        self.active = active
        self.run_id: str | None = None
        self.note = ""
        if spec.tracking.mlflow_uri:
            self.uri, artifacts = spec.tracking.mlflow_uri, None
        else:
            self.uri, artifacts = f"sqlite:///{store_dir.resolve() / 'mlflow.db'}", (store_dir / "mlartifacts")
            self.note = f"local MLflow store {store_dir} (no tracking.mlflow_uri in the spec)"
        if not active:
            return
        store_dir.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(self.uri)
        exp = self.client.get_experiment_by_name(spec.experiment)
        if exp is None:
            location = artifacts.resolve().as_uri() if artifacts else None
            exp_id = self.client.create_experiment(spec.experiment, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        tags = {"kubetune.spec_hash": spec_hash(spec), "kubetune.base_model": spec.base_model,
                "kubetune.spec_name": spec.name}
        run = self.client.create_run(exp_id, run_name=job_name(spec), tags=tags)
        self.run_id = run.info.run_id
        params, cut = mlflow_params(spec)
        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + BATCH])
        if cut:
            self.client.log_batch(self.run_id, tags=[RunTag("kubetune.truncated_params", ",".join(cut))])
        self.client.log_text(self.run_id, dump_spec(spec), "spec.yaml")

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if not self.active or not metrics:
            return
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if math.isfinite(float(v))]
        self.client.log_batch(self.run_id, metrics=batch)

    def log_artifacts(self, local_dir: Path, artifact_path: str | None = None) -> None:
        if self.active:
            self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def log_artifact(self, path: Path) -> None:
        if self.active:
            self.client.log_artifact(self.run_id, str(path))

    def log_table(self, table: dict[str, list[str]], name: str) -> None:
        if self.active:
            self.client.log_table(self.run_id, data=table, artifact_file=name)

    def end(self, ok: bool) -> None:
        if self.active and self.run_id:
            status = RunStatus.to_string(RunStatus.FINISHED if ok else RunStatus.FAILED)
            self.client.set_terminated(self.run_id, status=status)


def numeric(logs: dict[str, Any]) -> dict[str, float]:
    """The Trainer's log entries that are metrics, with eval perplexity added."""
    out = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if "eval_loss" in out:
        out["eval_perplexity"] = math.exp(min(out["eval_loss"], 50.0))
    return out


class MlflowCallback(TrainerCallback):
    """Sends every Trainer log line to MLflow (rank 0 only: the Tracker is inactive elsewhere)."""

    def __init__(self, tracker: Tracker):
        self.tracker = tracker

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.tracker.log_metrics(numeric(logs), step=state.global_step)


class ProgressPrinter(TrainerCallback):
    """One readable line per log step on rank 0, instead of progress bars."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        step = f"step {state.global_step}/{state.max_steps}"
        if "loss" in logs:
            tps = logs.get("tokens_per_second")
            print(f"[train] {step} loss {logs['loss']:.4f} lr {logs.get('learning_rate', 0):.2e} "
                  f"grad_norm {logs.get('grad_norm', float('nan')):.3f}" + (f" tokens/s {tps:,.0f}" if tps else ""),
                  flush=True)
        elif "eval_loss" in logs:
            print(f"[eval] {step} loss {logs['eval_loss']:.4f} perplexity {numeric(logs)['eval_perplexity']:.2f}",
                  flush=True)


class MeteredTrainer(Trainer):
    """A Trainer that counts trained tokens (labels != -100) and logs their rate.

    The count is taken where the Trainer fetches each optimizer step's micro-batches, so it is
    exact (no dataloader prefetch), and summed over ranks at each log step (all ranks log).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.tokens_trained = 0
        self._pending: torch.Tensor | None = None
        self._since: float | None = None

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches, num_items = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self._since is None:
            self._since = time.perf_counter()
        for batch in batches:
            n = (batch["labels"] != -100).sum()
            self._pending = n if self._pending is None else self._pending + n
        return batches, num_items

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._pending is not None and self._since is not None:
            tokens = int(self.accelerator.reduce(self._pending.to(self.args.device), reduction="sum").item())
            now = time.perf_counter()
            self.tokens_trained += tokens
            logs["tokens_per_second"] = tokens / max(now - self._since, 1e-9)
            logs["tokens_trained"] = float(self.tokens_trained)
            self._pending, self._since = None, now
        super().log(logs, start_time)


def stats_json(train: Any, eval_: Any | None) -> str:
    def one(s: Any) -> dict[str, Any]:
        return {k: v for k, v in vars(s).items() if isinstance(v, (int, float, str, list, dict)) or v is None}

    return json.dumps({"train": one(train), "eval": one(eval_) if eval_ is not None else None}, indent=2)
