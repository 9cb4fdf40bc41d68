"""The controllers the fake API server plays: Job (Indexed pods, status, conditions) and JobSet.

A Job that is not suspended gets one Pending pod per completion index, named, labelled and
owned the way the Job controller does it (`<job>-<index>-<5 chars>`, `batch.kubernetes.io/
job-name`, `batch.kubernetes.io/job-completion-index`, the template's labels). Tests then move
pods through phases with `PodState`s; the Job's status (active, ready, succeeded, failed) and
its terminal condition (Complete, or Failed as the Job controller decides it: `podFailurePolicy` rules (FailJob,
Ignore, Count, FailIndex), `backoffLimitPerIndex` / `maxFailedIndexes`, `backoffLimit`, `activeDeadlineSeconds`)
follow, as does a
JobSet's from its child Jobs.
"""

from __future__ import annotations

import copy
import secrets
import string
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.integration.fake_kube import FakeKube

JOBS, PODS, JOBSETS = ("batch/v1", "jobs"), ("v1", "pods"), ("jobset.x-k8s.io/v1alpha2", "jobsets")
EVENTS = ("v1", "events")
INDEX = "batch.kubernetes.io/job-completion-index"
JOB_NAME = "batch.kubernetes.io/job-name"
TERMINAL = ("Succeeded", "Failed")


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class PodState:
    """Where a test puts a pod: its phase and what `kubectl describe` would show."""

    phase: str  # Pending | Running | Succeeded | Failed
    node: str | None = "node-1"
    exit_code: int | None = None  # for Succeeded / Failed
    reason: str | None = None  # terminated reason: Completed, Error, OOMKilled; or a waiting reason when Pending
    restarts: int = 0
    last_reason: str | None = None  # lastState.terminated.reason (the previous run of the container)
    unschedulable: str | None = None  # PodScheduled=False with this message (Pending, no node), a FailedScheduling event
    message: str | None = None  # the waiting reason's message (ErrImagePull, CreateContainerConfigError, ...)
    nominated: str | None = None  # status.nominatedNodeName: the scheduler is preempting pods there for this one
    events: tuple[tuple[str, str, str, str], ...] = ()  # more (type, reason, message, component), e.g. an autoscaler's
    log: str = ""  # appended to the container's log when the pod enters this state


IMAGE_WAITING = ("ErrImagePull", "ImagePullBackOff")


def pod_events(pod: dict[str, Any], state: PodState) -> list[tuple[str, str, str, str]]:
    """The events the scheduler and the kubelet record when a pod gets into `state`: (type, reason, message, by)."""
    found = []
    if state.unschedulable:
        found.append(("Warning", "FailedScheduling", state.unschedulable, "default-scheduler"))
    image = pod["spec"]["containers"][0].get("image", "")
    if state.phase == "Pending" and state.reason in IMAGE_WAITING:
        found.append(("Warning", "Failed", f'Failed to pull image "{image}": {state.message or "not found"}', "kubelet"))
        found.append(("Warning", "Failed", f"Error: {state.reason}", "kubelet"))
        if state.reason == "ImagePullBackOff":
            found.append(("Normal", "BackOff", f'Back-off pulling image "{image}"', "kubelet"))
    if state.phase == "Pending" and state.reason == "CreateContainerConfigError":
        found.append(("Warning", "Failed", f"Error: {state.message or 'configuration error'}", "kubelet"))
    return found + list(state.events)


def _container_status(pod: dict[str, Any], state: PodState) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    status: dict[str, Any] = {"name": container["name"], "image": container.get("image", ""), "imageID": "",
                              "restartCount": state.restarts, "ready": state.phase == "Running",
                              "started": state.phase == "Running"}
    if state.phase == "Pending":
        waiting = {"reason": state.reason or "ContainerCreating"}
        if state.reason == "ImagePullBackOff":
            waiting["message"] = f'Back-off pulling image "{status["image"]}": ErrImagePull: {state.message or ""}'
        elif state.message:
            waiting["message"] = state.message
        status["state"] = {"waiting": waiting}
    elif state.phase == "Running":
        status["state"] = {"running": {"startedAt": now()}}
    else:
        code = state.exit_code if state.exit_code is not None else (0 if state.phase == "Succeeded" else 1)
        reason = state.reason or ("Completed" if code == 0 else "Error")
        status["state"] = {"terminated": {"exitCode": code, "reason": reason, "startedAt": now(), "finishedAt": now()}}
    if state.last_reason:
        status["lastState"] = {"terminated": {"exitCode": 137 if state.last_reason == "OOMKilled" else 1,
                                              "reason": state.last_reason, "startedAt": now(), "finishedAt": now()}}
    return status


def apply_state(pod: dict[str, Any], state: PodState) -> None:
    pod["status"]["phase"] = state.phase
    if state.nominated:
        pod["status"]["nominatedNodeName"] = state.nominated
    else:
        pod["status"].pop("nominatedNodeName", None)
    if state.unschedulable:
        pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                        "message": state.unschedulable, "lastTransitionTime": now()}]
        pod["status"].pop("containerStatuses", None)
        return
    if state.node:
        pod["spec"]["nodeName"] = state.node
        pod["status"]["hostIP"] = "10.0.0.1"
    pod["status"]["conditions"] = [{"type": "PodScheduled", "status": "True", "lastTransitionTime": now()}]
    pod["status"].setdefault("startTime", now())
    pod["status"]["containerStatuses"] = [_container_status(pod, state)]


def _suffix() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))


def _owner(obj: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}


def _new_pod(fake: FakeKube, job: dict[str, Any], index: int) -> None:
    name, ns = job["metadata"]["name"], job["metadata"]["namespace"]
    template = copy.deepcopy(job["spec"]["template"])
    meta = template.get("metadata") or {}
    labels = dict(meta.get("labels") or {}) | {
        JOB_NAME: name, "job-name": name, "batch.kubernetes.io/controller-uid": job["metadata"]["uid"],
        INDEX: str(index),
    }
    annotations = dict(meta.get("annotations") or {}) | {INDEX: str(index)}
    spec = template["spec"]
    if spec.get("subdomain"):
        spec["hostname"] = f"{name}-{index}"
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": f"{name}-{index}-{_suffix()}", "labels": labels, "annotations": annotations,
                        "ownerReferences": [_owner(job)]},
           "spec": spec, "status": {"phase": "Pending"}}
    if fake.refuse_pods:  # admission (a full ResourceQuota, ...) refuses it: the Job controller records why
        fake.event(job, "Warning", "FailedCreate",
                   f'Error creating: pods "{pod["metadata"]["name"]}" is forbidden: {fake.refuse_pods}', "job-controller")
        return
    fake.store(*PODS, ns, pod)


def job_pods(fake: FakeKube, job: dict[str, Any]) -> list[dict[str, Any]]:
    ns, uid = job["metadata"]["namespace"], job["metadata"]["uid"]
    pods = [p for p in fake.bucket(*PODS, ns).values()
            if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences", []))]
    return sorted(pods, key=lambda p: (int(p["metadata"]["labels"].get(INDEX, 0)), p["metadata"]["creationTimestamp"]))


def sync_job(fake: FakeKube, job: dict[str, Any]) -> None:
    """Create the pods a running Job needs, then recompute its status from them."""
    spec, status = job["spec"], job.setdefault("status", {})
    if spec.get("suspend") or any(c["type"] in ("Complete", "Failed") for c in status.get("conditions", [])):
        _recompute(fake, job)
        return
    completions = int(spec.get("completions") or 1)
    pods = job_pods(fake, job)
    live_or_done = {int(p["metadata"]["labels"][INDEX]) for p in pods if p["status"]["phase"] != "Failed"}
    if failure(spec, pods) is None:
        lost = failed_indexes(spec, pods)
        for index in range(completions):
            if index not in live_or_done and index not in lost:
                _new_pod(fake, job, index)
    status.setdefault("startTime", now())
    _recompute(fake, job)


def _exit_code(pod: dict[str, Any], container: str | None) -> int | None:
    for c in pod["status"].get("containerStatuses", []):
        if container in (None, c["name"]) and "terminated" in c.get("state", {}):
            return int(c["state"]["terminated"]["exitCode"])
    return None


def _action(spec: dict[str, Any], pod: dict[str, Any]) -> str:
    """What the Job's podFailurePolicy does with a failed pod: the first matching rule's action, else Count."""
    for rule in (spec.get("podFailurePolicy") or {}).get("rules", []):
        codes = rule.get("onExitCodes")
        if codes:
            code = _exit_code(pod, codes.get("containerName"))
            if code is not None and (code in codes["values"]) == (codes["operator"] == "In"):
                return rule["action"]
        for cond in rule.get("onPodConditions", []):
            if any(c["type"] == cond["type"] and c["status"] == cond.get("status", "True")
                   for c in pod["status"].get("conditions", [])):
                return rule["action"]
    return "Count"


def counted(spec: dict[str, Any], pods: list[dict[str, Any]]) -> dict[int, int]:
    """Failures that count, per completion index (podFailurePolicy `Ignore` ones do not)."""
    per_index: dict[int, int] = {}
    for pod in pods:
        if pod["status"]["phase"] == "Failed" and _action(spec, pod) in ("Count", "FailIndex"):
            index = int(pod["metadata"]["labels"][INDEX])
            per_index[index] = per_index.get(index, 0) + 1
    return per_index


def failed_indexes(spec: dict[str, Any], pods: list[dict[str, Any]]) -> set[int]:
    """Indexes past `backoffLimitPerIndex` (or failed by a `FailIndex` rule): not replaced."""
    if spec.get("backoffLimitPerIndex") is None:
        return set()
    limit = int(spec["backoffLimitPerIndex"])
    lost = {i for i, n in counted(spec, pods).items() if n > limit}
    lost |= {int(p["metadata"]["labels"][INDEX]) for p in pods
             if p["status"]["phase"] == "Failed" and _action(spec, p) == "FailIndex"}
    return lost


def failure(spec: dict[str, Any], pods: list[dict[str, Any]]) -> str | None:
    """The reason the Job fails now, as the Job controller gives it, or None."""
    if any(p["status"]["phase"] == "Failed" and _action(spec, p) == "FailJob" for p in pods):
        return "PodFailurePolicy"
    if spec.get("backoffLimitPerIndex") is not None:
        if len(failed_indexes(spec, pods)) > int(spec.get("maxFailedIndexes", len(pods) + 1)):
            return "MaxFailedIndexesExceeded"
        if spec.get("maxFailedIndexes") is None and failed_indexes(spec, pods):
            return None  # the other indexes go on; the Job fails at the end (FailedIndexes)
    if sum(counted(spec, pods).values()) > int(spec.get("backoffLimit", 6)):
        return "BackoffLimitExceeded"
    return None


def past_deadline(spec: dict[str, Any], status: dict[str, Any]) -> str | None:
    """`DeadlineExceeded` once the Job has been active `activeDeadlineSeconds` since its startTime (the Job
    controller checks on a timer; the fake when the Job is synced: FakeKube.tick)."""
    limit, started = spec.get("activeDeadlineSeconds"), status.get("startTime")
    if not limit or not started or spec.get("suspend"):
        return None
    elapsed = datetime.now(UTC) - datetime.strptime(started, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    return "DeadlineExceeded" if elapsed.total_seconds() >= int(limit) else None


def _recompute(fake: FakeKube, job: dict[str, Any]) -> None:
    spec, status = job["spec"], job.setdefault("status", {})
    pods = job_pods(fake, job)
    phases = [p["status"]["phase"] for p in pods]
    status.update(active=sum(p in ("Pending", "Running") for p in phases), ready=phases.count("Running"),
                  succeeded=phases.count("Succeeded"), failed=phases.count("Failed"), terminating=0)
    conditions = status.setdefault("conditions", [])
    if any(c["type"] in ("Complete", "Failed") for c in conditions):
        return
    done = {int(p["metadata"]["labels"][INDEX]) for p in pods if p["status"]["phase"] == "Succeeded"}
    if len(done) >= int(spec.get("completions") or 1):
        conditions += [_condition("SuccessCriteriaMet", "CompletionsReached"), _condition("Complete", "CompletionsReached")]
        status["completionTime"] = now()
    elif (reason := past_deadline(spec, status) or failure(spec, pods)) is not None:
        conditions += [_condition("FailureTarget", reason), _condition("Failed", reason)]
        for pod in pods:  # the Job controller terminates the pods still running
            if pod["status"]["phase"] not in TERMINAL:
                fake.remove(*PODS, job["metadata"]["namespace"], pod["metadata"]["name"])
        status.update(active=0, ready=0)
    else:
        return
    for owner in job["metadata"].get("ownerReferences", []):
        if owner["kind"] == "JobSet":
            jobset = fake.bucket(*JOBSETS, job["metadata"]["namespace"]).get(owner["name"])
            if jobset:
                sync_jobset(fake, jobset)


def _condition(kind: str, reason: str) -> dict[str, str]:
    message = {"BackoffLimitExceeded": "Job has reached the specified backoff limit",
               "PodFailurePolicy": "Container trainer failed with an exit code matching a FailJob rule",
               "MaxFailedIndexesExceeded": "Job has exceeded the specified maximal number of failed indexes",
               "DeadlineExceeded": "Job was active longer than specified deadline",
               }.get(reason, "Reached expected number of succeeded pods")
    return {"type": kind, "status": "True", "reason": reason, "message": message, "lastProbeTime": now(),
            "lastTransitionTime": now()}


def sync_jobset(fake: FakeKube, jobset: dict[str, Any]) -> None:
    """Child Jobs `<jobset>-<replicatedJob>-<i>` when not suspended; Completed / Failed from them."""
    ns, name = jobset["metadata"]["namespace"], jobset["metadata"]["name"]
    status = jobset.setdefault("status", {})
    if jobset["spec"].get("suspend"):
        return
    children = []
    for rjob in jobset["spec"]["replicatedJobs"]:
        for i in range(int(rjob.get("replicas", 1))):
            child_name = f"{name}-{rjob['name']}-{i}"
            child = fake.bucket(*JOBS, ns).get(child_name)
            if child is None:
                template = copy.deepcopy(rjob["template"])
                labels = dict((template.get("metadata") or {}).get("labels") or {}) | {
                    "jobset.sigs.k8s.io/jobset-name": name, "jobset.sigs.k8s.io/replicatedjob-name": rjob["name"]}
                child = fake.store(*JOBS, ns, {"apiVersion": "batch/v1", "kind": "Job", "metadata": {
                    "name": child_name, "labels": labels, "ownerReferences": [_owner(jobset)]},
                    "spec": template["spec"]})
                sync_job(fake, child)
            children.append(child)
    kinds = [c["type"] for child in children for c in child["status"].get("conditions", [])]
    if any(c["type"] in ("Completed", "Failed") for c in status.get("conditions", [])):
        return
    if "Failed" in kinds:
        status["conditions"] = [{"type": "Failed", "status": "True", "reason": "FailedJobs",
                                 "message": "jobset failed due to a failed child job", "lastTransitionTime": now()}]
    elif kinds.count("Complete") == len(children):
        status["conditions"] = [{"type": "Completed", "status": "True", "reason": "AllJobsCompleted",
                                 "message": "jobset completed successfully", "lastTransitionTime": now()}]
