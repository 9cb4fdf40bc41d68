"""Resuming a job on this machine from the checkpoints in its local `output.uri`: whether job NAME can
(`resume_problems`), and the `data.template_date` those checkpoints were trained with. A cluster's resume is
launcher/backends/kube_resume.py."""

from __future__ import annotations

from datetime import date
from pathlib import Path

from launcher import resolve


def resume_problems(name: str, output: str) -> list[str]:
    """Why job `name` cannot resume from a local `output` (empty when its checkpoints are there)."""
    if resolve.is_remote(output):
        return []  # the trainer reads it (this launcher may not have the S3 client)
    import json

    from trainer.train.checkpoint import FOLDER, MANIFEST

    manifest = Path(output) / FOLDER / MANIFEST
    if not manifest.is_file():
        return [f"{manifest.parent} holds no checkpoint, so job {name} cannot resume; submit without --resume to "
                "start afresh"]
    try:
        saved = json.loads(manifest.read_text(encoding="utf-8"))
        job, step = saved["job_name"], saved["entries"][-1]["step"]
    except (ValueError, KeyError, IndexError, TypeError):
        return [f"{manifest} is not a kubetune checkpoint manifest; delete {manifest.parent} and submit afresh"]
    if job != name:
        return [f"the checkpoints in {manifest.parent} are job {job}'s (step {step}), not {name}'s: "
                f"--resume {job} continues that one"]
    return []


def recorded_template_date(output: str) -> str | None:
    """The `data.template_date` the checkpoints in a local `output` were trained with (None: none recorded)."""
    if resolve.is_remote(output):
        return None  # the trainer reads it (this launcher may not have the S3 client); a different date is refused
    import json

    from trainer.train.checkpoint import FOLDER, MANIFEST

    try:
        saved = json.loads((Path(output) / FOLDER / MANIFEST).read_text(encoding="utf-8"))
        recorded = saved["spec"].get("data.template_date")
        return date.fromisoformat(recorded).isoformat()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
