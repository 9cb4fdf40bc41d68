"""What `launch list` and `launch status` print: submissions grouped by spec (or matrix), one in detail."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from launcher.backends.kube_errors import ApiError
from launcher.errors import UserError
from launcher.exports import from_registry, registry_lines
from launcher.output import columns
from launcher.progress import annotation, cell, from_json, progress_json, progress_line, training_job_name
from launcher.status import (
    COMPONENT,
    MATRIX,
    PART_OF,
    SPEC_NAME,
    SUBMISSION,
    Snapshot,
    age,
    completions,
    export_state,
    gang_line,
    labels,
    state,
)

if TYPE_CHECKING:
    from launcher.backends.kubernetes import Cluster
    from launcher.tracking_rest import Progress


def _owned_by_jobset(job: dict[str, Any]) -> bool:
    return any(o.get("kind") == "JobSet" for o in job["metadata"].get("ownerReferences") or [])


def groups(cluster: Cluster, all_namespaces: bool) -> list[dict[str, Any]]:
    """Submissions (training Job or JobSet) grouped by their matrix label, else their spec name; newest first."""
    training = f"{PART_OF},{COMPONENT}=training"
    jobs = cluster.list("Job", training, all_namespaces)
    workloads = [j for j in jobs if not _owned_by_jobset(j)]
    annotated = {(j["metadata"].get("namespace", cluster.namespace), j["metadata"]["name"]): j for j in jobs}
    try:
        workloads += cluster.list("JobSet", training, all_namespaces)
    except ApiError as e:  # no right to read JobSets: then launch cannot have created any for this user
        if e.code != 403:
            raise
    exports = {(j["metadata"]["namespace"], labels(j).get(SUBMISSION)): j
               for j in cluster.list("Job", f"{PART_OF},{COMPONENT}=export", all_namespaces)}
    found: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for w in workloads:
        meta, lab = w["metadata"], labels(w)
        name, ns = meta["name"], meta.get("namespace", cluster.namespace)
        export = exports.get((ns, lab.get(SUBMISSION, name)))
        trained = annotation(annotated.get((ns, training_job_name(w))))
        published = {k: p for k, p in (("training", trained), ("export", annotation(export))) if p is not None}
        snap = Snapshot(name, ns, lab.get(SPEC_NAME, ""), meta.get("creationTimestamp", ""), state(w),
                        completions(w), export_state(export, state(w)) if export else None)
        key = ("matrix", lab[MATRIX]) if lab.get(MATRIX) else ("spec", snap.spec_name or name)
        found.setdefault(key, []).append({
            "name": name, "namespace": ns, "status": snap.status, "training": snap.training,
            "export": snap.export, "completions": snap.completions, "created": snap.created, "age": age(snap.created),
            "progress": {phase: progress_json(p) for phase, p in published.items()}})
    return [{"group": group, "by": by,
             "submissions": sorted(rows, key=lambda r: r["created"], reverse=True)}
            for (by, group), rows in sorted(found.items(), key=lambda kv: kv[0][1])]


def _cell(progress: dict[str, dict[str, Any]]) -> str:
    return cell({phase: from_json(p) for phase, p in progress.items()})


def list_table(found: list[dict[str, Any]], all_namespaces: bool, namespace: str) -> list[str]:
    if not found:
        return [f"no kubetune jobs {'in any namespace' if all_namespaces else f'in namespace {namespace}'}"]
    headers = [*(["NAMESPACE"] if all_namespaces else []), "GROUP", "NAME", "STATUS", "COMPLETIONS", "EXPORT", "PROGRESS",
               "AGE"]
    rows = []
    for g in found:
        group = f"{g['group']} (matrix)" if g["by"] == "matrix" else g["group"]
        for s in g["submissions"]:
            rows.append([*([s["namespace"]] if all_namespaces else []), group, s["name"], s["status"],
                         s["completions"], s["export"] or "none", _cell(s["progress"]), s["age"]])
    return columns(headers, rows)


def registered_exports(kube: Cluster, found: list[dict[str, Any]], mlflow_uri: str | None,
                       ) -> tuple[dict[str, dict[str, Any] | None], list[str]]:
    """`launch list --exports`: each listed submission's adapter exports, from the model versions registered from its
    MLflow run (launcher/exports.py `from_registry`; one spec read and one MLflow query each), and a line for each
    submission whose run could not be read."""
    from dataclasses import replace

    from launcher.backends.kubernetes import Cluster as Kube
    from launcher.cluster import Tracking, spec_of

    exported, notes = {}, []
    for s in (s for g in found for s in g["submissions"] if s["export"] == "succeeded"):  # registered: passed
        ns = s["namespace"] or kube.namespace
        try:
            spec = spec_of(kube if ns == kube.namespace else Kube(replace(kube.target, namespace=ns)), s["name"])
            run, note = Tracking.of(spec, mlflow_uri).progress(s["name"])
        except UserError as e:
            run, note = None, e.message
        exported[s["name"]] = from_registry(run.registered) if run else None
        if run is None:
            notes.append(f"  {s['name']}: {note}")
    return exported, (["", "exports not read:", *notes] if notes else [])


def status_table(snap: Snapshot, found: Progress | None, note: str | None) -> list[str]:
    from launcher.cluster import blocker_lines, failure_lines
    from launcher.cluster import progress_line as mlflow_line

    parts = f"training {snap.training} {snap.completions}" + (f", export {snap.export}" if snap.export else "")
    lines = [f"name:       {snap.name}", f"namespace:  {snap.namespace}", f"spec:       {snap.spec_name or '-'}",
             f"status:     {snap.status} ({parts})", f"age:        {age(snap.created)}", ""]
    rows = [[p.rank if p.component == "training" else p.component, p.name, p.phase, p.restarts, p.node, p.reason]
            for p in snap.pods]
    lines += columns(["RANK", "POD", "PHASE", "RESTARTS", "NODE", "REASON"], rows) if rows else ["no pods"]
    if gang := gang_line(snap):  # some ranks wait in the preflight for others still Pending
        lines += ["", gang]
    lines.append("")
    for b in snap.blockers:  # why it does not start, with the fix
        lines += blocker_lines(b)
    if snap.blockers:
        lines.append("")
    if failed := failure_lines(snap):  # what Kubernetes recorded as the workload's failure
        lines += [*failed, ""]
    for phase, p in snap.progress.items():  # what the trainer and the export published on their Jobs
        lines.append(f"{phase + ':':<11} {progress_line(p).removeprefix(phase).lstrip(' :')}")
    if snap.progress:
        lines.append("")
    if found:
        lines.append(f"MLflow run {found.run_id} ({found.run_status}) at {found.tracking_uri}")
        if "training" not in snap.progress:  # nothing published (an older trainer): MLflow's metrics say where it is
            lines.append(f"  {mlflow_line(found)}")
        if found.registered_model:
            lines.append(f"  registered: {found.registered_model}")
        lines += registry_lines(found.registered)
    else:
        lines.append(f"MLflow: {note}")
    return lines
