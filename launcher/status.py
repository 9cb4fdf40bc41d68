"""What a submission looks like in the cluster: its state, its pods rank by rank, its export Job, their progress.

Plain functions over the API's own dicts (what `kubectl get -o json` shows). A submission is the training Job named
after it (or a JobSet, when the chart rendered one), an optional `<name>-export` Job, and their pods, all labelled
`kubetune.dev/submission=<name>` by the chart. States, the same words in tables and in JSON: pending, queued
(suspended by Kueue), suspended, running, succeeded, failed; the export Job also: waiting (suspended until training
succeeds, when rank 0 starts it), not started (training succeeded but the export is still suspended: blockers.py).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from launcher.backends.kube_errors import ApiError
from launcher.errors import UserError
from launcher.progress import Progress, of_submission

if TYPE_CHECKING:
    from launcher.backends.kubernetes import Cluster
    from launcher.blocker import Blocker

PART_OF = "app.kubernetes.io/part-of=kubetune"
SUBMISSION = "kubetune.dev/submission"
SPEC_NAME = "kubetune.dev/job"
MATRIX = "kubetune.dev/matrix"
COMPONENT = "app.kubernetes.io/component"
QUEUE = "kueue.x-k8s.io/queue-name"
INDEX = "batch.kubernetes.io/job-completion-index"
DEFAULT_CONTAINER = "kubectl.kubernetes.io/default-container"
DONE = ("succeeded", "failed")
PREFLIGHT_RUNNING = "init container preflight: running"


def labels(obj: dict[str, Any]) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def state(obj: dict[str, Any]) -> str:
    """The state of a Job or a JobSet."""
    status = obj.get("status") or {}
    true = {c.get("type") for c in status.get("conditions") or [] if c.get("status") == "True"}
    if true & {"Complete", "Completed"}:
        return "succeeded"
    if "Failed" in true:
        return "failed"
    if (obj.get("spec") or {}).get("suspend"):
        return "queued" if QUEUE in labels(obj) else "suspended"
    jobs = status.get("replicatedJobsStatus") or [status]  # a JobSet counts per replicated Job
    if any(int(j.get("ready") or 0) > 0 for j in jobs):
        return "running"
    return "pending"


def export_state(export: dict[str, Any], training: str) -> str:
    """The export Job's state beside the training's: it waits, suspended, until training has succeeded."""
    found = state(export)
    if found == "suspended":
        return "not started" if training == "succeeded" else "waiting"
    return found


def completions(obj: dict[str, Any]) -> str:
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if obj.get("kind") == "JobSet" or "replicatedJobs" in spec:
        total = sum(int(r.get("replicas", 1)) for r in spec.get("replicatedJobs") or [])
        done = sum(int(r.get("succeeded") or 0) for r in status.get("replicatedJobsStatus") or [])
        return f"{done}/{total} jobs"
    return f"{int(status.get('succeeded') or 0)}/{int(spec.get('completions') or 1)}"


def age(timestamp: str | None, now: datetime | None = None) -> str:
    if not timestamp:
        return "-"
    then = datetime.fromisoformat(timestamp)  # `...Z`, or an event's MicroTime (`...123456Z`)
    then = then if then.tzinfo else then.replace(tzinfo=UTC)
    return duration(((now or datetime.now(UTC)) - then).total_seconds())


def duration(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 3600 * 2:
        return f"{s // 60}m{s % 60:02d}s" if s < 600 else f"{s // 60}m"
    if s < 86400 * 2:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600}h"


@dataclass
class Pod:
    name: str
    component: str  # training | export
    rank: int | None  # training pods only: the completion index
    phase: str
    restarts: int
    node: str
    reason: str  # why it is where it is: the last termination (OOMKilled!), a waiting reason, unschedulable


def _terminated(t: dict[str, Any]) -> str:
    return f"{t.get('reason') or 'Terminated'} (exit {t.get('exitCode')})"


def _reason(pod: dict[str, Any], container: str) -> str:
    status = pod.get("status") or {}
    for init in status.get("initContainerStatuses") or []:
        st = init.get("state") or {}
        if "terminated" in st and st["terminated"].get("exitCode"):
            return f"init container {init['name']}: {_terminated(st['terminated'])}"
        if "running" in st or "waiting" in st:
            return f"init container {init['name']}: " + ("running" if "running" in st else st["waiting"].get("reason", "waiting"))
    cs = next((c for c in status.get("containerStatuses") or [] if c.get("name") == container), None)
    if cs:
        st, last = cs.get("state") or {}, (cs.get("lastState") or {}).get("terminated")
        if "terminated" in st:
            return _terminated(st["terminated"])
        if "waiting" in st:
            waiting = st["waiting"]
            return ": ".join(x for x in (waiting.get("reason"), waiting.get("message")) if x)
        if last:
            return f"restarted after {_terminated(last)}"
    if status.get("reason"):
        return ": ".join(x for x in (status["reason"], status.get("message")) if x)
    for cond in status.get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            return ": ".join(x for x in (cond.get("reason"), cond.get("message")) if x)
    return ""


def main_container(obj: dict[str, Any]) -> str:
    """The container `kubectl logs` picks for a pod (or pod template): the default-container annotation, else the first."""
    containers = [c["name"] for c in (obj.get("spec") or {}).get("containers") or []]
    annotated = ((obj.get("metadata") or {}).get("annotations") or {}).get(DEFAULT_CONTAINER)
    return annotated or (containers[0] if containers else "")


def pod(obj: dict[str, Any]) -> Pod:
    meta, spec, status = obj["metadata"], obj.get("spec") or {}, obj.get("status") or {}
    container = main_container(obj)
    cs = next((c for c in status.get("containerStatuses") or [] if c.get("name") == container), {})
    component, index = labels(obj).get(COMPONENT, "training"), labels(obj).get(INDEX)
    rank = int(index) if index is not None and component == "training" else None
    return Pod(meta["name"], component, rank,
               status.get("phase", "Unknown"), int(cs.get("restartCount") or 0), spec.get("nodeName") or "-",
               _reason(obj, container))


@dataclass
class Snapshot:
    name: str
    namespace: str
    spec_name: str
    created: str
    training: str  # the training workload's state
    completions: str
    export: str | None  # the export Job's state; None when the spec has no export
    pods: list[Pod] = field(default_factory=list)
    blockers: list[Blocker] = field(default_factory=list)  # what keeps it from starting (launcher/blockers.py)
    gave_up: str | None = None  # `submit --wait` stopped waiting on a blocker: why, in one line
    failure: tuple[str, str] | None = None  # the training workload's Failed condition: (reason, message)
    deadline: int | None = None  # the training Job's activeDeadlineSeconds
    progress: dict[str, Progress] = field(default_factory=dict)  # per phase, from the Jobs (launcher/progress.py)

    @property
    def status(self) -> str:
        """The submission's state: failed as soon as either part failed, succeeded when both did."""
        if "failed" in (self.training, self.export):
            return "failed"
        if self.training == "succeeded":
            return "succeeded" if self.export in (None, "succeeded") else "running"
        return self.training

    @property
    def done(self) -> bool:
        return self.status in DONE

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "namespace": self.namespace, "status": self.status, "spec_name": self.spec_name,
                "created": self.created, "training": self.training, "completions": self.completions,
                "export": self.export, "pods": [asdict(p) for p in self.pods],
                "blocked": [asdict(b) for b in self.blockers],
                "failure": None if self.failure is None else {"reason": self.failure[0], "message": self.failure[1]},
                "deadline_seconds": self.deadline}


def not_found(cluster: Cluster, name: str) -> UserError:
    others = cluster.list("Job", f"{SPEC_NAME}={name},{COMPONENT}=training")
    if others:
        names = ", ".join(sorted(j["metadata"]["name"] for j in others))
        return UserError(f"no submission {name} in namespace {cluster.namespace}: {name} is a spec name; "
                         f"its submissions there: {names}")
    return UserError(f"no kubetune job {name} in namespace {cluster.namespace} (it may have finished more than its "
                     f"TTL ago, or be in another namespace): `launch list -n {cluster.namespace}` shows what is there")


def workload(cluster: Cluster, name: str) -> dict[str, Any]:
    """The submission's training Job, or its JobSet; a UserError saying what exists when neither does."""
    found = cluster.get("Job", name) or jobset(cluster, name)
    if found is None:
        raise not_found(cluster, name)
    return found


def jobset(cluster: Cluster, name: str) -> dict[str, Any] | None:
    """The JobSet `name`; None also when the user may not read JobSets (then launch cannot have made one)."""
    try:
        return cluster.get("JobSet", name)
    except ApiError as e:
        if e.code == 403:
            return None
        raise


def gather(cluster: Cluster, name: str) -> Snapshot:
    """The submission now; until it has ended, also what keeps it from starting (events read only then)."""
    from launcher.blockers import find

    owner = workload(cluster, name)
    export = cluster.get("Job", f"{name}-export")
    raw = cluster.list("Pod", f"{SUBMISSION}={name}")
    pods = sorted((pod(p) for p in raw),
                  key=lambda p: (p.component != "training", p.rank if p.rank is not None else -1, p.name))
    meta = owner["metadata"]
    snap = Snapshot(name, cluster.namespace, labels(owner).get(SPEC_NAME, ""), meta.get("creationTimestamp", ""),
                    state(owner), completions(owner), export_state(export, state(owner)) if export else None, pods)
    snap.failure = failed_condition(owner)
    snap.deadline = (owner.get("spec") or {}).get("activeDeadlineSeconds")
    snap.progress = of_submission(cluster, owner, export)
    if not snap.done:
        snap.blockers = find(cluster, owner, export, raw)
    return snap


def failed_condition(obj: dict[str, Any]) -> tuple[str, str] | None:
    """A Job's or JobSet's Failed condition, (reason, message); None while it has not failed."""
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return cond.get("reason") or "Failed", cond.get("message") or ""
    return None


def pod_for(cluster: Cluster, name: str, component: str, rank: int) -> dict[str, Any]:
    """The newest pod of the submission's rank (training) or of its export Job: what `launch logs` reads."""
    owner = workload(cluster, name)
    found = cluster.list("Pod", f"{SUBMISSION}={name},{COMPONENT}={component}")
    if component == "training":
        found = [p for p in found if labels(p).get(INDEX) == str(rank)]
    if found:
        return max(found, key=lambda p: p["metadata"].get("creationTimestamp", ""))
    where = f"{cluster.namespace}/{name}"
    if component == "export":
        export = cluster.get("Job", f"{name}-export")
        if export is None:
            raise UserError(f"submission {where} has no export Job (its spec has no export section)")
        if export_state(export, state(owner)) == "waiting":
            raise UserError(f"the export Job of {where} has not started: it waits, suspended, until training has "
                            f"succeeded (rank 0 starts it); no log yet: `launch status {name}` shows where training is")
        raise UserError(f"the export Job of {where} has no pod (yet): `launch status {name}` shows why")
    nodes = int((owner.get("spec") or {}).get("completions") or 0)
    if owner.get("kind") == "Job" and nodes and rank >= nodes:
        raise UserError(f"--rank {rank}: submission {where} has ranks 0 to {nodes - 1}")
    raise _no_pod(owner, where, name, rank)


def _no_pod(owner: dict[str, Any], where: str, name: str, rank: int) -> UserError:
    st = state(owner)
    if st in ("queued", "suspended"):
        return UserError(f"submission {where} is {st}: no pods yet")
    return UserError(f"submission {where} ({st}) has no pod for rank {rank} (pods are deleted with the Job after its "
                    f"TTL): `launch status {name}` shows what is left")


def _ranks(ranks: list[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ",".join(map(str, sorted(ranks)))


def gang_line(snap: Snapshot) -> str | None:
    """A multi-node job partly started: `ranks 2,3 pending: <why>; ranks 0,1 waiting in preflight for them`.

    Ranks whose `preflight` init container runs wait for the others (trainer/preflight); each other
    rank still Pending is named with what holds it: its blocker (launcher/blockers.py) or its pod's reason.
    """
    training = [p for p in snap.pods if p.component == "training" and p.rank is not None]
    waiting = sorted({p.rank for p in training if p.phase == "Pending" and p.reason == PREFLIGHT_RUNNING})
    if not waiting:
        return None
    why: dict[str, list[int]] = {}
    for p in training:
        if p.phase != "Pending" or p.rank in waiting:
            continue
        blocker = next((b for b in snap.blockers if b.where.startswith(f"rank {p.rank} (")), None)
        text = blocker.message if blocker else (p.reason or "not started yet")
        why.setdefault(text, []).append(p.rank)
    if not why:
        return None
    held = "; ".join(f"{_ranks(ranks)} pending: {text}" for text, ranks in why.items())
    return f"{held}; {_ranks(waiting)} waiting in preflight for them"
