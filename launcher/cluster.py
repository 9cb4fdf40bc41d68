"""`launch` against a cluster, above the API calls, once a job is submitted (launcher/cluster_submit.py):
following it to its end (`--wait`), the failure diagnosis, and where its MLflow run is.

Polling, every KUBETUNE_POLL_SECONDS (default 5): a line for each change of a pod's phase or
reason and of the job's state, and a progress line: each export phase as it starts, and every PROGRESS_EVERY
polls where training is, from the Jobs' progress annotations (launcher/progress.py), else from MLflow's run.
What keeps the job from starting (launcher/blockers.py: a full quota, an unschedulable pod, an image
that cannot be pulled, a missing Secret) is said with its fix; once one has lasted the stuck grace
(`--stuck-grace`, STUCK_GRACE by default) with nothing progressing, following stops (exit 1).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from launcher import env
from launcher.errors import PodFailed, UserError
from launcher.progress import progress_json, with_mlflow
from launcher.status import Snapshot, gang_line, gather, main_container
from launcher.tracking_rest import Progress, TrackingRefused, TrackingUnreachable, progress

if TYPE_CHECKING:
    from launcher.backends.kubeconfig import Target
    from launcher.backends.kubernetes import Cluster
    from launcher.blocker import Blocker
    from trainer.spec.job import JobSpec

POLL_SECONDS = 5.0
STUCK_GRACE = 600.0  # seconds a blocker may last, with no scale-up or preemption under way, before --wait gives up
PROGRESS_EVERY = 6
LOG_TAIL = 200  # lines of a failed pod's log searched for the trainer's own diagnosis
SHOWN_LOG_LINES = 10


def poll_seconds() -> float:
    return env.seconds("KUBETUNE_POLL_SECONDS", POLL_SECONDS, "seconds between status polls")


@dataclass
class Tracking:
    """Where a submission's MLflow run is: its spec's tracking server (or --mlflow-uri), experiment, length."""

    uri: str | None
    experiment: str
    max_steps: int | None
    epochs: float | None
    output: str | None

    @classmethod
    def of(cls, spec: JobSpec, override: str | None = None) -> Tracking:
        t = spec.training
        return cls(override or spec.tracking.mlflow_uri, spec.experiment, t.max_steps, t.epochs, spec.output.uri)

    def progress(self, run_name: str) -> tuple[Progress | None, str | None]:
        """(progress, None), or (None, why there is none) in one line."""
        if not self.uri:
            return None, (f"no tracking.mlflow_uri in the spec: the pods keep the run in a local store, copied to "
                          f"{(self.output or '<output.uri>').rstrip('/')}/mlflow when training ends")
        try:
            found = progress(self.uri, self.experiment, run_name, self.max_steps, self.epochs)
        except TrackingRefused as e:  # reached, but credentials or TLS refused: its message names the variables
            return None, str(e)
        except TrackingUnreachable as e:
            return None, f"{e}; pass --mlflow-uri (e.g. through `kubectl port-forward`)"
        return found, None if found else f"no MLflow run {run_name} in experiment {self.experiment} yet"


def spec_of(cluster: Cluster, name: str) -> JobSpec:
    """The resolved spec the pods read (the `spec.yaml` key of the submission's ConfigMap)."""
    from pydantic import ValidationError

    from trainer.spec.job import JobSpec

    cm = cluster.get("ConfigMap", name)
    if cm is None or "spec.yaml" not in (cm.get("data") or {}):
        raise UserError(f"configmaps {cluster.namespace}/{name}: missing, or without spec.yaml")
    try:
        return JobSpec.model_validate(yaml.safe_load(cm["data"]["spec.yaml"]))
    except (ValidationError, yaml.YAMLError) as e:
        raise UserError(f"configmaps {cluster.namespace}/{name}: its spec.yaml is not a spec this launch reads: "
                        f"{str(e).splitlines()[0]}") from None


def progress_line(p: Progress) -> str:
    from launcher.status import duration

    parts = []
    if p.done is not None and p.total:
        done = f"{int(p.done)}" if p.unit == "steps" else f"{p.done:.2f}"
        parts.append(f"{p.unit[:-1]} {done}/{p.total:g} ({100 * (p.fraction or 0):.0f}%)")
    m = p.metrics
    for key, label, fmt in (("loss", "loss", ".4f"), ("eval_loss", "eval loss", ".4f"),
                            ("learning_rate", "lr", ".2e"), ("tokens_per_second", "tokens/s", ",.0f")):
        if key in m:
            parts.append(f"{label} {m[key]:{fmt}}")
    if p.eta_seconds is not None:
        parts.append(f"ETA {duration(p.eta_seconds)}")
    return ", ".join(parts) or f"run {p.run_id}: no metrics yet"


def _describe(snap: Snapshot) -> dict[str, str]:
    seen = {"job": f"job {snap.name}: {snap.status}"}
    for p in snap.pods:
        who = f"rank {p.rank}" if p.component == "training" else p.component
        seen[p.name] = f"{who} ({p.name}): {p.phase}" + (f" on {p.node}" if p.node != "-" else "") + (
            f": {p.reason}" if p.reason else "")
    return seen


def blocker_lines(b: Blocker, since: bool = True) -> list[str]:
    """A blocker as `launch` prints it: what happened and where (and for how long), then the fix."""
    from launcher.status import age

    head = "waiting" if b.progressing else "not starting"
    lasted = f" (for {age(b.since)})" if since and b.since else ""
    return [f"{head}: {b.where}: {b.message}{lasted}", f"  fix: {b.fix}"]


def seconds_text(seconds: float) -> str:
    from launcher.status import duration

    return f"{round(seconds, 1):g}s" if seconds < 120 else duration(seconds)


def follow(cluster: Cluster, name: str, say: Callable[[str], None], tracking: Tracking | None,
           grace: float = STUCK_GRACE) -> Snapshot:
    """Poll until the submission succeeded or failed, saying what changes; Ctrl-C leaves it running.

    Also returns, with `gave_up` set, once a blocker (not a scale-up or a preemption under way) has lasted `grace`
    seconds since this loop first saw it."""
    interval, seen, polls, last_progress = poll_seconds(), {}, 0, ""
    told: dict[tuple[str, str], str] = {}  # (kind, where) of each blocker said -> its message then
    stuck: dict[tuple[str, str], float] = {}  # (kind, where) -> when first seen, while nothing progresses
    try:
        while True:
            snap = gather(cluster, name)
            now = _describe(snap)
            for key, line in now.items():
                if seen.get(key) != line:
                    say(line)
            seen = now
            for b in snap.blockers:
                key = (b.kind, b.where)
                if told.get(key) != b.message:
                    head, fix = blocker_lines(b, since=False)
                    say(head)
                    if key not in told:
                        say(fix)
                    told[key] = b.message
            if snap.done:
                return snap
            clock = time.monotonic()
            stuck = {key: stuck.get(key, clock) for key in ((b.kind, b.where) for b in snap.blockers
                                                            if not b.progressing)}
            if stuck and clock - min(stuck.values()) >= grace:
                oldest = min(stuck, key=lambda k: stuck[k])
                b = next(b for b in snap.blockers if (b.kind, b.where) == oldest)
                snap.gave_up = f"{b.where}: {b.summary} for {seconds_text(clock - stuck[oldest])}"
                return snap
            last_progress = say_progress(snap, tracking, polls, last_progress, say)
            polls += 1
            time.sleep(interval)
    except KeyboardInterrupt:
        ns = cluster.namespace
        raise PodFailed(f"stopped waiting; job {ns}/{name} keeps running: `launch status {name} -n {ns}`, "
                        f"`launch logs {name} -f -n {ns}`, `launch cancel {name} -n {ns}`", exit_code=130) from None


def say_progress(snap: Snapshot, tracking: Tracking | None, polls: int, last: str, say: Callable[[str], None]) -> str:
    """`--wait`'s progress line, said when it changed: what the Jobs' annotations say (launcher/progress.py; each
    export phase as it comes, training every PROGRESS_EVERY polls), else MLflow's run (every PROGRESS_EVERY polls)."""
    from launcher.progress import progress_line as published_line

    p = snap.progress.get("export") or snap.progress.get("training")
    if p is not None and (p.phase == "export" or polls % PROGRESS_EVERY == 0):
        line = published_line(p)
    elif p is None and tracking and snap.training == "running" and polls % PROGRESS_EVERY == 0:
        found, _ = tracking.progress(snap.name)
        line = f"training: {progress_line(found)}" if found else ""
    else:
        return last
    if line and line != last:
        say(line)
        return line
    return last


def failure_lines(snap: Snapshot) -> list[str]:
    """Why the training workload failed, as Kubernetes recorded it; past its deadline, how to give it more."""
    if snap.failure is None:
        return []
    reason, message = snap.failure
    lines = [f"training {snap.training}: {reason}" + (f": {message}" if message else "")]
    if reason == "DeadlineExceeded":
        ran = f" ({seconds_text(snap.deadline)})" if snap.deadline else ""
        lines.append(f"  it ran past its deadline{ran}, resources.deadline: Kubernetes stopped every pod. If it was "
                     f"still making progress, resume it with more time: `launch submit SPEC --resume {snap.name} "
                     f"--set resources.deadline=72h -n {snap.namespace}` (a resumed job's deadline counts from its own start)")
    return lines


def diagnosis(cluster: Cluster, snap: Snapshot) -> list[str]:
    """For a failed submission: each failed pod's reason and its own `[kubetune] error:` lines (or its log's end)."""
    from launcher.backends.local import ERROR_MARK

    lines = failure_lines(snap)
    for p in snap.pods:
        if p.phase != "Failed":
            continue
        who = f"rank {p.rank}" if p.component == "training" else p.component
        lines.append(f"{who} ({p.name}) failed: {p.reason or 'no reason given'}")
        obj = cluster.get("Pod", p.name)
        if obj is None:
            continue
        try:
            text = "".join(cluster.log(p.name, main_container(obj), tail=LOG_TAIL))
        except UserError as e:
            lines.append(f"  (no log: {e.message})")
            continue
        errors = [line[m.end():].strip() for line in text.splitlines() if (m := ERROR_MARK.search(line))]
        shown = errors or text.splitlines()[-SHOWN_LOG_LINES:]
        lines += [f"  {line}" for line in shown]
        flag = "--export" if p.component == "export" else f"--rank {p.rank}"
        lines.append(f"  the whole log: launch logs {snap.name} {flag} -n {snap.namespace}")
    if snap.training == "failed" and snap.export == "waiting":
        lines.append(f"the export Job stays suspended (no pod) and goes with the training Job after its TTL: "
                     f"`launch cancel {snap.name} -n {snap.namespace}` deletes both now")
    elif snap.training == "failed" and snap.export not in (None, "succeeded", "failed"):
        lines.append(f"the export Job waits for training's _SUCCESS marker until its deadline: "
                     f"`launch cancel {snap.name} -n {snap.namespace}` stops it")
    return lines


def result(snap: Snapshot, target: Target, found: Progress | None, note: str | None) -> dict[str, Any]:
    """The one document `-o json|yaml` prints; `name namespace status mlflow_run_id registered_model` are a contract
    (the GitHub Actions workflow reads them)."""
    data = {"name": snap.name, "namespace": snap.namespace, "status": snap.status,
            "mlflow_run_id": found.run_id if found else None,
            "registered_model": found.registered_model if found else None,
            "context": target.context, "spec_name": snap.spec_name, "training": snap.training,
            "export": snap.export, "completions": snap.completions}
    # each phase's live progress: the Jobs' annotations (launcher/progress.py), else MLflow's run for training
    data["progress"] = {phase: progress_json(p) for phase, p in with_mlflow(snap.progress, found).items()}
    if found:
        data["mlflow"] = {"tracking_uri": found.tracking_uri, "run_status": found.run_status,
                          "metrics": found.metrics, "progress": found.fraction, "eta_seconds": found.eta_seconds,
                          "registered_versions": found.registered}
    elif note:
        data["mlflow"] = {"unavailable": note}
    data["pods"] = snap.to_dict()["pods"]
    data["blocked"] = snap.to_dict()["blocked"]
    data["failure"], data["deadline_seconds"] = snap.to_dict()["failure"], snap.deadline
    if gang := gang_line(snap):  # a multi-node job partly started: who waits for whom
        data["gang"] = gang
    if snap.gave_up:
        data["gave_up"] = snap.gave_up
    return data
