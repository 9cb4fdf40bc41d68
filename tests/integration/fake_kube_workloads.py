"""The controllers the fake API server plays: Job (Indexed pods, status, conditions) and JobSet.

A Job that is not suspended gets one Pending pod per completion index, named, labelled and
owned the way the Job controller does it (`<job>-<index>-<5 chars>`, `batch.kubernetes.io/
job-name`, `batch.kubernetes.io/job-completion-index`, the template's labels). Tests then move
pods through phases with `PodState`s; the Job's status (active, ready, succeeded, failed) and
its terminal condition (Complete, or Failed after `backoffLimit` failures) follow, as does a
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
    unschedulable: str | None = None  # PodScheduled=False with this message (Pending, no node)
    log: str = ""  # appended to the container's log when the pod enters this state


def _container_status(pod: dict[str, Any], state: PodState) -> dict[str, Any]:
    container = pod["spec"]["containers"][0]
    status: dict[str, Any] = {"name": container["name"], "image": container.get("image", ""), "imageID": "",
                              "restartCount": state.restarts, "ready": state.phase == "Running",
                              "started": state.phase == "Running"}
    if state.phase == "Pending":
        status["state"] = {"waiting": {"reason": state.reason or "ContainerCreating"}}
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
    failed = sum(p["status"]["phase"] == "Failed" for p in pods)
    if failed <= int(spec.get("backoffLimit", 6)):
        for index in range(completions):
            if index not in live_or_done:
                _new_pod(fake, job, index)
    status.setdefault("startTime", now())
    _recompute(fake, job)


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
    elif status["failed"] > int(spec.get("backoffLimit", 6)):
        conditions += [_condition("FailureTarget", "BackoffLimitExceeded"), _condition("Failed", "BackoffLimitExceeded")]
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
    message = "Job has reached the specified backoff limit" if reason == "BackoffLimitExceeded" else "Reached expected number of succeeded pods"
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
