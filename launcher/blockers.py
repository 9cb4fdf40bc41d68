"""Why a submission does not start: what the cluster's events and the pods' status say, with the fix.

Read for a submission that has not ended, and only where something looks stuck, so a healthy job
costs no extra API call:

- a Job with fewer pods than it should run: its `FailedCreate` events (the Job controller could
  not create a pod: a ResourceQuota is full, a quota requires limits, an admission webhook or Pod
  Security refused it);
- a Pending pod the scheduler cannot place (`PodScheduled=False`, `Unschedulable`): the newest
  `FailedScheduling` message and what the cluster autoscaler (`TriggeredScaleUp`,
  `NotTriggerScaleUp`, `FailedScaleUp`) or Karpenter (`Nominated`) says about it;
- a Pending pod whose container waits in `ErrImagePull` / `ImagePullBackOff` / `InvalidImageName`,
  or in `CreateContainerConfigError` (a Secret or a key in it is missing).

Events are core/v1 Events read with `fieldSelector=involvedObject.kind=...,involvedObject.name=...`
(launcher/kube_events.py). Without the right to list events the pods' own status still gives what it can.
This module finds where to look; a Job's `FailedCreate` is read by blocker_quota.py, a Pending pod by
blocker_pods.py, into the Blocker record of blocker.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from launcher.blocker import Blocker
from launcher.blocker_pods import pod_blockers
from launcher.blocker_quota import failed_create
from launcher.kube_events import events, newest

if TYPE_CHECKING:
    from launcher.backends.kubernetes import Cluster


def _owned(pods: list[dict[str, Any]], owner: dict[str, Any]) -> list[dict[str, Any]]:
    uid = owner["metadata"].get("uid")
    return [p for p in pods if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])]


def _finished(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Completed", "Failed") and c.get("status") == "True" for c in conditions)


def _short_of_pods(job: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    """A running (not suspended, not finished) Job with fewer live pods than it should have now."""
    spec, status = job.get("spec") or {}, job.get("status") or {}
    if spec.get("suspend") or _finished(job):
        return False
    completions = int(spec.get("completions") or 1)
    want = min(int(spec.get("parallelism") or completions), completions - int(status.get("succeeded") or 0))
    live = [p for p in _owned(pods, job) if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    return len(live) < want


def _jobs(cluster: Cluster, owner: dict[str, Any], export: dict[str, Any] | None,
          pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    jobs = [export] if export else []
    if owner.get("kind") != "JobSet":
        return [owner, *jobs]
    spec = owner.get("spec") or {}
    want = sum(int(r.get("replicas", 1)) * int(((r.get("template") or {}).get("spec") or {}).get("parallelism") or 1)
               for r in spec.get("replicatedJobs") or [])
    training = [p for p in pods if (p["metadata"].get("labels") or {}).get("app.kubernetes.io/component", "training")
                == "training" and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
    if spec.get("suspend") or _finished(owner) or len(training) >= want:
        return jobs
    return cluster.list("Job", f"jobset.sigs.k8s.io/jobset-name={owner['metadata']['name']}") + jobs


def find(cluster: Cluster, owner: dict[str, Any], export: dict[str, Any] | None,
         pods: list[dict[str, Any]]) -> list[Blocker]:
    """What keeps the submission (its training Job or JobSet, its export Job, their pods) from starting."""
    ns = cluster.namespace
    found = []
    for job in _jobs(cluster, owner, export, pods):
        if _short_of_pods(job, pods):
            name = job["metadata"]["name"]
            refused = newest(events(cluster, "Job", name), "FailedCreate")
            if refused:
                found.append(failed_create(f"Job {ns}/{name}", refused, ns))
    for pod in pods:
        found += pod_blockers(cluster, pod, ns)
    if export is not None and (export.get("spec") or {}).get("suspend") and _succeeded(owner) \
            and "kueue.x-k8s.io/queue-name" not in (export["metadata"].get("labels") or {}):  # queued: Kueue's turn
        found.append(_export_not_started(owner, export, ns))
    return found


def _succeeded(obj: dict[str, Any]) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") in ("Complete", "Completed") and c.get("status") == "True" for c in conditions)


def _export_not_started(owner: dict[str, Any], export: dict[str, Any], ns: str) -> Blocker:
    """Training succeeded, the export Job is still suspended: rank 0 could not start it (trainer/train/start_export.py)."""
    from trainer.train.start_export import QUEUE_LABEL, manual_command, patch_for

    name = export["metadata"]["name"]
    since = (owner.get("status") or {}).get("completionTime") or ""
    return Blocker("export", f"Job {ns}/{name}", "the export Job was not started",
                   "training succeeded but its export Job is still suspended: the trainer of rank 0 could not start "
                   "it (its last log lines say why: `launch logs " + owner["metadata"]["name"] + "`)",
                   f"start it: {manual_command(name, ns, patch_for((owner['metadata'].get('labels') or {}).get(QUEUE_LABEL)))}",
                   since)
