"""A job's live progress as the trainer and the export publish it (trainer/tracking/progress.py): read back, and said.

The same JSON document everywhere: a local job's progress file (`KUBETUNE_PROGRESS_FILE`), the `kubetune.io/progress`
annotation of a cluster submission's training Job (of the JobSet's Job `<name>-node-0`) and export Job. When it is
missing (a trainer too old to publish it, a job not started yet) MLflow's run stands in (`from_mlflow`).

    training step 120/2000 (6%) · epoch 0.4 · 3.2k tokens/s · MFU 41% · loss 1.23 · ETA 1h02m
    export: converting q4_k_m
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from launcher.backends.kubernetes import Cluster
    from launcher.tracking_rest import Progress as MlflowProgress

ANNOTATION = "kubetune.io/progress"  # trainer/tracking/progress.py ANNOTATION
STALE = 120.0  # seconds: an older document says how old it is
PHASES = ("training", "export")


@dataclass(frozen=True)
class Progress:
    phase: str  # training | export
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    trained_tokens: int | None = None
    tokens_per_second: float | None = None
    eta_seconds: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    mfu: float | None = None
    detail: str | None = None  # export: what it is doing ("converting q4_k_m"); training: None
    updated: float | None = None  # unix seconds

    @property
    def fraction(self) -> float | None:
        if self.step is None or not self.total_steps:
            return None
        return min(1.0, max(0.0, self.step / self.total_steps))


def _number(value: Any, kind: type) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:  # NaN
        return None
    return kind(value)


def parse_progress(text: str | None) -> Progress | None:
    """The document in `text`; None for no text, text that is not a JSON object, or one without a phase."""
    if not text:
        return None
    try:
        raw = json.loads(text)
    except ValueError:
        return None
    if not isinstance(raw, dict) or not isinstance(raw.get("phase"), str) or not raw["phase"]:
        return None
    values: dict[str, Any] = {"phase": raw["phase"]}
    for f in fields(Progress):
        if f.name == "phase":
            continue
        if f.name == "detail":
            values["detail"] = raw["detail"] if isinstance(raw.get("detail"), str) else None
        else:
            values[f.name] = _number(raw.get(f.name), int if f.type == "int | None" else float)
    return Progress(**values)


def _count(value: float) -> str:
    for size, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def _training_parts(p: Progress) -> list[str]:
    from launcher.status import duration

    parts = []
    if p.step is not None:
        parts.append(f"step {p.step}/{p.total_steps}" + (f" ({100 * p.fraction:.0f}%)" if p.fraction is not None
                                                         else "") if p.total_steps else f"step {p.step}")
    if p.epoch is not None:
        parts.append(f"epoch {p.epoch:.2f}".rstrip("0").rstrip("."))
    if p.tokens_per_second is not None:
        parts.append(f"{_count(p.tokens_per_second)} tokens/s")
    if p.mfu is not None:
        parts.append(f"MFU {100 * p.mfu:.0f}%")
    if p.loss is not None:
        parts.append(f"loss {p.loss:.3g}")
    if p.eta_seconds is not None:
        parts.append(f"ETA {duration(p.eta_seconds)}")
    return parts


def progress_line(p: Progress, now: float | None = None) -> str:
    """One line: `training step 120/2000 (6%) · epoch 0.4 · 3.2k tokens/s · MFU 41% · loss 1.23 · ETA 1h02m`, or
    `export: converting q4_k_m`; a document older than STALE seconds ends with how old it is."""
    from launcher.status import duration

    if p.phase == "training":
        line = " · ".join([p.phase, *_training_parts(p)]).replace(" · ", " ", 1)
    else:
        line = f"{p.phase}: {p.detail}" if p.detail else p.phase
    age = (time.time() if now is None else now) - p.updated if p.updated is not None else 0.0
    return line + (f" · updated {duration(age)} ago" if age > STALE else "")


def progress_json(p: Progress) -> dict[str, Any]:
    """What `-o json` carries: every field of the document, and the fraction done."""
    return asdict(p) | {"fraction": p.fraction}


def from_json(data: dict[str, Any]) -> Progress:
    """A Progress back from what `progress_json` made of it."""
    return Progress(**{f.name: data.get(f.name) for f in fields(Progress)})


def from_mlflow(found: MlflowProgress) -> Progress:
    """The training progress MLflow's run gives (launcher/tracking_rest.py), when the trainer published none."""
    m = found.metrics
    steps = found.unit == "steps"
    return Progress("training", step=found.step if steps else None,
                    total_steps=int(found.total) if steps and found.total else None,
                    epoch=m.get("epoch", None if steps else found.done), tokens_per_second=m.get("tokens_per_second"),
                    eta_seconds=found.eta_seconds, loss=m.get("loss"), learning_rate=m.get("learning_rate"))


def annotation(obj: dict[str, Any] | None) -> Progress | None:
    """The progress an object (a Job) carries in its `kubetune.io/progress` annotation."""
    return parse_progress((((obj or {}).get("metadata") or {}).get("annotations") or {}).get(ANNOTATION))


def training_job_name(owner: dict[str, Any]) -> str:
    """The Job the trainer annotates: the training Job itself, or the JobSet's one Job (charts/kubetune/templates/
    _helpers.tpl: replicated Job `node`, index 0)."""
    name = owner["metadata"]["name"]
    return f"{name}-node-0" if _is_jobset(owner) else name


def _is_jobset(obj: dict[str, Any]) -> bool:  # list items carry no `kind`
    return obj.get("kind") == "JobSet" or "replicatedJobs" in (obj.get("spec") or {})


def of_submission(cluster: Cluster, owner: dict[str, Any], export: dict[str, Any] | None) -> dict[str, Progress]:
    """Each phase's progress, from the Job annotations: {"training": ..., "export": ...} where published."""
    job = cluster.get("Job", training_job_name(owner)) if _is_jobset(owner) else owner
    found = {"training": annotation(job), "export": annotation(export)}
    return {phase: p for phase, p in found.items() if p is not None}


def with_mlflow(published: dict[str, Progress], found: MlflowProgress | None) -> dict[str, Progress]:
    """Each phase's progress: what the job published, else (training) what its MLflow run says."""
    if "training" in published or found is None or found.done is None:
        return published
    return {"training": from_mlflow(found), **published}


def cell(published: dict[str, Progress]) -> str:
    """`launch list`'s PROGRESS column: the latest phase, short (`step 120/2000 (6%) ETA 62m`, `converting q4_k_m`)."""
    from launcher.status import duration

    p = published.get("export") or published.get("training")
    if p is None:
        return "-"
    if p.phase != "training":
        return p.detail or p.phase
    parts = [f"step {p.step}/{p.total_steps}" + (f" ({100 * p.fraction:.0f}%)" if p.fraction is not None else "")
             if p.step is not None and p.total_steps else ""]
    parts.append(f"ETA {duration(p.eta_seconds)}" if p.eta_seconds is not None else "")
    return " ".join(x for x in parts if x) or "training"
