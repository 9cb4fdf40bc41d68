"""The Blocker record: one thing that keeps a submission from starting (launcher/blockers.py finds them), and
`who`, how `launch` names a pod in it and everywhere else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GPU = "nvidia.com/gpu"


@dataclass
class Blocker:
    """One thing that keeps a submission from starting: what, where, since when, and the fix."""

    kind: str  # quota | refused | unschedulable | image | config | export (not started after training)
    where: str  # `Job ml/x`, `rank 1 (x-1-abcde)`, `export (x-export-0-abcde)`
    summary: str  # a few words, for the final error line
    message: str  # what happened, with the cluster's own words
    fix: str
    since: str = ""  # when the cluster first said so (an event's or a condition's time), "" when unknown
    progressing: bool = False  # a scale-up or a preemption is under way: not stuck (yet)


def who(pod: dict[str, Any]) -> str:
    """`rank 1 (x-1-abcde)` or `export (x-export-0-abcde)`: how `launch` names a pod everywhere."""
    labels = pod["metadata"].get("labels") or {}
    index = labels.get("batch.kubernetes.io/job-completion-index")
    component = labels.get("app.kubernetes.io/component", "training")
    role = f"rank {index}" if component == "training" and index is not None else component
    return f"{role} ({pod['metadata']['name']})"
