"""What `launch list`, `launch status` and `launch logs` show of local jobs (launcher/local_jobs.py): the same words
and `-o json` keys as for a cluster's submissions (launcher/cluster.py `result`, launcher/views.py), plus `local`
(where the record is, the runner, the outcome)."""

from __future__ import annotations

import codecs
import json
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from launcher import exports
from launcher.errors import UserError
from launcher.local_jobs import LIVE, PROGRESS, Record
from launcher.output import columns
from launcher.progress import Progress, cell, from_json, parse_progress, progress_json, progress_line
from launcher.status import Pod, age

FOLLOW_POLL = 0.5  # seconds between looks at a followed log


def _pods(rec: Record) -> list[dict[str, Any]]:
    return [p for p in rec.pods if p["component"] == "training"]


def training_state(rec: Record) -> str:
    phases = [p["phase"] for p in _pods(rec)]
    if rec.status == "cancelled" and not all(p == "Succeeded" for p in phases):
        return "cancelled"
    if "Failed" in phases:
        return "failed"
    if phases and all(p == "Succeeded" for p in phases):
        return "succeeded"
    if "Running" in phases:
        return "running"
    return "cancelled" if rec.status == "cancelled" else "queued" if rec.status == "queued" else "pending"


def export_state(rec: Record) -> str | None:
    pod = next((p for p in rec.pods if p["component"] == "export"), None)
    if pod is None:
        return None
    phase = {"Running": "running", "Succeeded": "succeeded", "Failed": "failed"}.get(pod["phase"])
    if phase:
        return phase
    if rec.status not in LIVE:  # ended before the export started
        return "cancelled" if rec.status == "cancelled" else "not started"
    return "not started" if training_state(rec) == "succeeded" else "waiting"


def completions(rec: Record) -> str:
    return f"{sum(p['phase'] == 'Succeeded' for p in _pods(rec))}/{rec.nodes}"


def progress(rec: Record) -> dict[str, Progress]:
    """Each phase's live progress as the pods published it: {"training": ..., "export": ...} where there is one."""
    found = {}
    for phase in PROGRESS:
        try:
            p = parse_progress(rec.progress_file(phase).read_text(encoding="utf-8"))
        except OSError:
            p = None
        if p is not None:
            found[phase] = p
    return found


def pods(rec: Record) -> list[Pod]:
    """The record's pods as a cluster's are shown (launcher/status.py Pod): the node is this machine."""
    return [Pod(f"{rec.name}-{p['rank']}" if p["component"] == "training" else f"{rec.name}-export", p["component"],
                p["rank"], p["phase"], 0, rec.host or "local", p["reason"]) for p in rec.pods]


def _success(rec: Record) -> dict[str, Any]:
    """The trainer's `_SUCCESS` marker in a local output folder (its MLflow run), or nothing."""
    if rec.status != "succeeded":
        return {}
    try:
        found = json.loads((Path(rec.output_uri) / "_SUCCESS").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def exported(rec: Record) -> dict[str, Any] | None:
    """The job's export as its files say (launcher/exports.py), once the job ended; None before or without one."""
    return exports.read(rec.output_uri) if rec.export and rec.status not in LIVE else None


def result(rec: Record) -> dict[str, Any]:
    """`launch status NAME -o json|yaml` of a local job: the keys of a cluster submission's, `local` and `exported`
    (its merged GGUFs, shared bases and adapter GGUFs with their gate results)."""
    done = _success(rec)
    failure = None if rec.status in (*LIVE, "succeeded") else {"reason": rec.status, "message": rec.message or ""}
    return {
        "name": rec.name, "namespace": None, "status": rec.status, "mlflow_run_id": done.get("run_id"),
        "registered_model": done.get("registered_model"), "context": None, "spec_name": rec.spec_name,
        "training": training_state(rec), "export": export_state(rec), "completions": completions(rec),
        "progress": {phase: progress_json(p) for phase, p in progress(rec).items()},
        "pods": [asdict(p) for p in pods(rec)], "blocked": [], "failure": failure, "deadline_seconds": None,
        "local": {"folder": str(rec.folder), "spec_path": rec.spec_path, "output_uri": rec.output_uri,
                  "host": rec.host, "pid": rec.pid, "detached": rec.detached, "created": rec.created,
                  "started": rec.started, "ended": rec.ended, "phase": rec.phase, "exit_code": rec.exit_code,
                  "message": rec.message, "logs": {(f"rank {p['rank']}" if p["component"] == "training" else "export"):
                                                   str(rec.path(p["log"])) for p in rec.pods}},
        "exported": exported(rec),
    }


def progress_lines(rec: Record) -> list[str]:
    """Each phase's progress as launcher/views.py shows a cluster's: `training:  step 3/10 (30%) · ...`."""
    return [f"{phase + ':':<11} {progress_line(p).removeprefix(phase).lstrip(' :')}"
            for phase, p in progress(rec).items()]


def status_table(rec: Record) -> list[str]:
    export = export_state(rec)
    parts = f"training {training_state(rec)} {completions(rec)}" + (f", export {export}" if export else "")
    runner = f"pid {rec.pid}" + (" (detached)" if rec.detached else "") if rec.pid else "not started"
    lines = [f"name:       {rec.name}", f"where:      this machine (a local job; its record: {rec.folder})",
             f"spec:       {rec.spec_name} ({rec.spec_path})", f"status:     {rec.status} ({parts})",
             f"age:        {age(rec.created)}; runner {runner}", ""]
    rows = [[p.rank if p.component == "training" else p.component, p.name, p.phase, p.reason] for p in pods(rec)]
    lines += [*columns(["RANK", "POD", "PHASE", "REASON"], rows), ""]
    lines += progress_lines(rec) or ["progress:   none published yet" if rec.status in LIVE else "progress:   none"]
    lines.append("")
    if rec.status not in LIVE:
        code = f" (exit {rec.exit_code})" if rec.exit_code is not None else ""
        lines.append(f"outcome:    {rec.status}{code}" + (f": {rec.message}" if rec.message else ""))
        if rec.status == "succeeded":
            lines.append(f"results:    {rec.output_uri}")
        lines += exports.status_lines(exported(rec))
    lines.append(f"logs:       launch logs {rec.name} [-f] [--rank N]" + (" [--export]" if export else ""))
    return lines


def list_groups(recs: list[Record]) -> list[dict[str, Any]]:
    """Local jobs grouped by spec name, newest first (the shape of launcher/views.py `groups`)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for rec in recs:
        found.setdefault(rec.spec_name, []).append({
            "name": rec.name, "namespace": None, "status": rec.status, "training": training_state(rec),
            "export": export_state(rec), "completions": completions(rec), "created": rec.created,
            "age": age(rec.created), "progress": {phase: progress_json(p) for phase, p in progress(rec).items()},
            "exported": exported(rec)})
    return [{"group": group, "by": "spec", "submissions": rows} for group, rows in sorted(found.items())]


def list_table(groups: list[dict[str, Any]]) -> list[str]:
    if not groups:
        return ["no local jobs on this machine"]
    rows = [[g["group"], s["name"], s["status"], s["completions"], s["export"] or "none",
             cell({phase: from_json(p) for phase, p in s["progress"].items()}), s["age"]]
            for g in groups for s in g["submissions"]]
    found = {s["name"]: s.get("exported") for g in groups for s in g["submissions"]}
    return [*columns(["GROUP", "NAME", "STATUS", "COMPLETIONS", "EXPORT", "PROGRESS", "AGE"], rows),
            *exports.list_lines(found)]


def log_file(rec: Record, rank: int | None, export: bool) -> tuple[dict[str, Any], Path]:
    """The record's pod that `launch logs` reads (rank 0 by default), and its log file."""
    if export:
        pod = next((p for p in rec.pods if p["component"] == "export"), None)
        if pod is None:
            raise UserError(f"local job {rec.name} has no export pod (its spec has no export section)")
    else:
        pod = next((p for p in _pods(rec) if p["rank"] == (rank or 0)), None)
        if pod is None:
            raise UserError(f"--rank {rank}: local job {rec.name} has ranks 0 to {rec.nodes - 1}")
    return pod, rec.path(pod["log"])


def lines(path: Path, tail: int | None) -> tuple[str, int]:
    """The log's text (its last `tail` lines) and where it ends."""
    data = path.read_bytes()
    text = data.decode("utf-8", errors="replace")
    if tail is not None:
        text = "".join(text.splitlines(keepends=True)[-tail:]) if tail else ""
    return text, len(data)


def follow(path: Path, offset: int, ended: Any) -> Iterator[str]:
    """What is written to `path` after `offset`, until `ended()` says the pod is done and nothing more came."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    while True:
        done = ended()  # asked before reading: what the pod wrote before it ended is read after
        with path.open("rb") as f:
            f.seek(offset)
            data = f.read()
        offset += len(data)
        if text := decoder.decode(data, final=done and not data):
            yield text
        if data:
            continue
        if done:
            return
        time.sleep(FOLLOW_POLL)
