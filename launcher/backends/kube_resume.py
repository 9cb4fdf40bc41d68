"""`launch submit --resume NAME` on a cluster: submission NAME runs again under its own name.

Its pods then continue from NAME's latest checkpoint in `output.uri` (trainer/train/resume.py resumes the
checkpoints of the same job name; another name starts at step 0). Kubernetes itself restarts a
preempted job's pods, so this is for a job that has ended without finishing: failed (past its
`resources.max_restarts` or `resources.deadline`, a fixed bug), or cancelled. A failed one's objects
are deleted first, the same objects come back under the same names.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from launcher.backends.kubernetes import Cluster
from launcher.cluster import poll_seconds, spec_of
from launcher.errors import UserError

GONE_TIMEOUT = 180.0  # seconds for the old objects to be deleted (pods get their termination grace first)


def recorded_template_date(cluster: Cluster, name: str) -> str | None:
    """The `data.template_date` submission NAME trained with (its spec ConfigMap); None once that is gone."""
    try:
        day = spec_of(cluster, name).data.template_date
    except UserError:
        return None
    return day.isoformat() if day else None


def retire(cluster: Cluster, name: str, manifests: list[dict[str, Any]], say: Callable[[str], None],
           timeout: float = GONE_TIMEOUT) -> None:
    """Make way for NAME's new objects: refuse a submission that is still alive or succeeded, delete a failed
    one, and wait until none of the objects about to be created exists."""
    from launcher.status import jobset, state

    where = f"{cluster.namespace}/{name}"
    owner = cluster.get("Job", name) or jobset(cluster, name)
    if owner is not None:
        st = state(owner)
        if st == "succeeded":
            raise UserError(f"--resume {name}: job {where} succeeded, there is nothing to resume; submit without "
                            "--resume to train again")
        if st != "failed":
            raise UserError(f"--resume {name}: job {where} is {st}; Kubernetes restarts a preempted job's pods and "
                            f"they resume by themselves. To restart it now from its checkpoint: `launch cancel {name} "
                            f"-n {cluster.namespace}`, then --resume")
        cluster.delete("Job", f"{name}-export", propagation="Foreground")
        cluster.delete(owner["kind"], name, propagation="Foreground")
        say(f"deleted the failed job {where} and its objects, to submit it again under its own name")
    wanted = [(m["kind"], m["metadata"]["name"]) for m in manifests]
    deadline = time.monotonic() + timeout
    while left := [f"{kind} {n}" for kind, n in wanted if cluster.get(kind, n) is not None]:
        if time.monotonic() >= deadline:
            raise UserError(f"--resume {name}: still in namespace {cluster.namespace} after {timeout:.0f} s: "
                            f"{', '.join(left)} (being deleted, or made by hand): delete them, then --resume again")
        time.sleep(poll_seconds())
