"""Creating what `helm template` rendered for one submission, so that it lives and dies as one.

The owner goes first: the training Job (or the JobSet, when the chart rendered one), created
suspended so that no pod starts before its ConfigMap and Service exist. Then the export Job, which
the chart renders suspended: training's rank 0 starts it once it has succeeded, and drops the
ownerReference to the owner it gets here (trainer/train/start_export.py). Until then it goes with the
training Job (a training that never succeeds takes it along); from then on the training Job's
`ttlSecondsAfterFinished` cannot delete a running or recent export, which has its own. Then the
NetworkPolicy (with `networkPolicy.enabled`: before any pod starts), ServiceAccount, Secret, ConfigMap,
Service, Role and RoleBinding, each owned by the training Job
AND the export Job: Kubernetes deletes a dependent once all its owners are gone, so they live as
long as either Job. Last, the workloads are let go (`suspend: false`), except those the chart
rendered suspended (the export Job, waiting for training; a Kueue queue: Kueue admits them).

A ServiceAccount that exists already (a platform team's, or one named in a values file) is
reused as it is; one named after the submission is owned like the rest, a shared one is not.
If anything fails once the owner exists, the export Job and the owner are deleted (Foreground)
and everything created so far goes with them: a failed submit leaves nothing behind.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from launcher.backends.kube_errors import ApiError
from launcher.backends.kubernetes import KINDS, Cluster
from launcher.errors import UserError
from launcher.status import COMPONENT

OWNED_ORDER = ("Job", "NetworkPolicy", "ServiceAccount", "Secret", "ConfigMap", "Service", "Role",
               "RoleBinding")  # after the owner; the NetworkPolicy before any pod can start
WORKLOADS = ("Job", "JobSet")


@dataclass
class Created:
    kind: str
    name: str
    note: str  # created | reused (an existing ServiceAccount) | queued (left suspended for Kueue) | waiting (the export)


def owner_of(manifests: list[dict[str, Any]], name: str) -> dict[str, Any]:
    jobsets = [m for m in manifests if m["kind"] == "JobSet"]
    found = jobsets or [m for m in manifests if m["kind"] == "Job" and m["metadata"]["name"] == name]
    if len(found) != 1:
        raise UserError(f"the rendered chart has no training Job (or JobSet) named {name}: "
                        "check the values files passed with -f (job.name is set by launch)")
    return found[0]


def check(manifests: list[dict[str, Any]], namespace: str) -> None:
    """Every object is a kind launch can create, in the namespace it submits to."""
    problems = []
    for m in manifests:
        kind, name = m.get("kind"), (m.get("metadata") or {}).get("name")
        if kind not in KINDS or kind == "Pod":
            known = ", ".join(k for k in KINDS if k != "Pod")
            problems.append(f"{kind} {name}: launch cannot create a {kind} (it creates {known}); "
                            "remove it from the values files")
        elif m["metadata"].get("namespace") not in (None, namespace):
            problems.append(f"{kind} {name}: rendered for namespace {m['metadata']['namespace']}, "
                            f"but this submission goes to namespace {namespace}")
    if problems:
        raise UserError("the rendered chart cannot be submitted as it is", problems)


def _reference(owner: dict[str, Any]) -> dict[str, Any]:
    # no blockOwnerDeletion: setting it needs update rights on the owner's finalizers
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"]}


def create(
    cluster: Cluster, manifests: list[dict[str, Any]], name: str, say: Callable[[str], None]
) -> list[Created]:
    check(manifests, cluster.namespace)
    rendered_owner = owner_of(manifests, name)
    others = [m for m in manifests if m is not rendered_owner]
    let_go: list[tuple[str, str]] = []  # workloads we suspended and will start

    def suspended(doc: dict[str, Any]) -> dict[str, Any]:
        body = copy.deepcopy(doc)
        if body["kind"] in WORKLOADS and not body["spec"].get("suspend"):
            body["spec"]["suspend"] = True
            let_go.append((body["kind"], body["metadata"]["name"]))
        return body

    def note(doc: dict[str, Any], created: Created) -> Created:
        if doc["kind"] in WORKLOADS and doc["spec"].get("suspend"):  # rendered suspended: left as it is
            export = (doc["metadata"].get("labels") or {}).get(COMPONENT) == "export"
            created.note = "waiting" if export else "queued"  # the trainer, resp. Kueue, starts it
        why = " (suspended until training succeeds: rank 0 starts it)" if created.note == "waiting" else ""
        say(f"{created.note} {created.kind} {cluster.namespace}/{created.name}{why}")
        return created

    owner = cluster.create(suspended(rendered_owner))
    done = [note(rendered_owner, Created(owner["kind"], name, "created"))]
    jobs: list[dict[str, Any]] = []  # the other Jobs created (the export): owners of the rest too
    try:
        for kind in OWNED_ORDER:
            for doc in (m for m in others if m["kind"] == kind):
                created, obj = _create_owned(cluster, suspended(doc), [owner] if kind == "Job" else [owner, *jobs], name)
                jobs += [obj] if kind == "Job" and obj else []
                done.append(note(doc, created))
        for kind, workload in let_go:
            cluster.patch(kind, workload, {"spec": {"suspend": False}})
    except UserError as e:
        gone = [*(("Job", j["metadata"]["name"]) for j in jobs), (owner["kind"], name)]
        try:
            for kind, obj_name in gone:  # the export Job outlives the training Job once started: deleted too
                cluster.delete(kind, obj_name, propagation="Foreground")
            cleanup = f"deleted {' and '.join(f'{k} {cluster.namespace}/{n}' for k, n in gone)} and what was " \
                      "created with them"
        except UserError as again:
            cleanup = f"and deleting {kind} {cluster.namespace}/{obj_name} failed too: {again.message}"
        raise UserError(f"{e.message}\n  (nothing was submitted: {cleanup})", e.problems) from None
    return done


def _create_owned(cluster: Cluster, body: dict[str, Any], owners: list[dict[str, Any]],
                  name: str) -> tuple[Created, dict[str, Any] | None]:
    """Create `body` owned by each of `owners` (a shared ServiceAccount by none); the object, None if reused."""
    kind, obj_name = body["kind"], body["metadata"]["name"]
    shared = kind == "ServiceAccount" and obj_name != name
    if not shared:
        refs = [_reference(o) for o in owners]
        body["metadata"]["ownerReferences"] = [*body["metadata"].get("ownerReferences", []), *refs]
    try:
        obj = cluster.create(body)
    except ApiError as e:
        if e.code == 409 and kind == "ServiceAccount":
            return Created(kind, obj_name, "reused"), None
        raise
    return Created(kind, obj_name, "created"), obj
