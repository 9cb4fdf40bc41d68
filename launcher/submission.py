"""A submission: one job of a spec, uniquely named, resolved for its target, with its chart values; and the
manifests `helm template` renders for it (shared by launcher/client.py, which prepares submissions, and what
runs them: launcher/local_job.py here, launcher/cluster_submit.py on a cluster)."""

from __future__ import annotations

import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from launcher import helm
from trainer.spec.job import JobSpec

SUFFIX_CHARS = string.ascii_lowercase + string.digits


@dataclass
class Submission:
    name: str  # unique per submission: `<spec.name>-<5 chars>`
    spec: JobSpec  # resolved: what the pods read
    spec_path: Path
    local: bool
    values: dict[str, Any]
    warnings: list[str]  # what a cluster would refuse, shown by a dry run instead of failing it
    notes: list[str] = field(default_factory=list)  # the GPU memory check: verdict, auto-fit changes
    resumed: bool = False  # `--resume`: an earlier submission's name, run again to continue from its checkpoints


def unique_name(base: str) -> str:
    return f"{base}-{''.join(secrets.choice(SUFFIX_CHARS) for _ in range(5))}"


def render(sub: Submission, extra_values: Sequence[Path] = (), namespace: str = "default") -> str:
    """The manifests `helm template` renders for this submission."""
    return helm.template(sub.name, sub.values, extra_values, namespace)
