"""Checkpoints in `output.uri` (a folder or an `s3://` prefix): layout, manifest, publish, fetch, prune.

    <output>/checkpoints/step-000120/...          one checkpoint: the Trainer's own files (adapter, optimizer,
                                                   scheduler, RNG states per rank, trainer_state.json, DeepSpeed
                                                   or FSDP shards) + kubetune_state.json (data position of every
                                                   rank, MLflow run id, counters)
    <output>/checkpoints/latest.json              the manifest, written LAST
    <output>/checkpoints/restarts.json            the job's starts, counted by rank 0 (`count_start`): a job
                                                   restarts at most `resources.max_restarts` times

A checkpoint exists only when the manifest names it: its files are uploaded first, then the
manifest is replaced in one write (an `os.replace` for a folder, one PUT for S3, which S3 makes
visible whole or not at all). A job killed while uploading leaves a folder no manifest names;
the next commit deletes it. Every file is listed with its size and sha256, checked on fetch; a
checkpoint that fails the check is skipped for the one before it.

Torch-free: the Trainer side (what goes into a checkpoint, and when) is `trainer/train/resume.py`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from trainer import storage
from trainer.spec.errors import UsageError

FORMAT = 1
FOLDER = "checkpoints"
MANIFEST = "latest.json"
STATE = "kubetune_state.json"  # written by rank 0 into every checkpoint
RESTARTS = "restarts.json"  # {"job_name", "starts"}: how often this job started (rank 0, at each start)
CHUNK = 1 << 20


class CheckpointError(UsageError, RuntimeError):
    """A manifest or checkpoint that cannot be used; the message names the URI and what to do."""


@dataclass
class Entry:
    """One complete checkpoint: its folder name, step and files (relative path -> size, sha256)."""

    name: str
    step: int
    world_size: int
    files: dict[str, dict[str, Any]]
    written_at: str = ""
    rows_trained: int | None = None


@dataclass
class Manifest:
    job_name: str
    run_id: str | None
    spec: dict[str, str]  # the flattened job spec (trainer.spec.io.flatten) that wrote the checkpoints
    entries: list[Entry] = field(default_factory=list)  # oldest first; the last one is the latest
    format: int = FORMAT

    @property
    def latest(self) -> Entry | None:
        return self.entries[-1] if self.entries else None


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def folder(output: str) -> str:
    return storage.join(output, FOLDER)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def digests(local_dir: Path) -> dict[str, dict[str, Any]]:
    """Relative path -> {size, sha256} of every file under `local_dir`."""
    out = {}
    for p in sorted(p for p in local_dir.rglob("*") if p.is_file()):
        out[p.relative_to(local_dir).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_of(p)}
    return out


# -- manifest ------------------------------------------------------------------------------
def read_manifest(output: str) -> Manifest | None:
    """The manifest of `output`, or None when there is none (no checkpoint yet)."""
    uri = storage.join(folder(output), MANIFEST)
    if not storage.exists(uri):
        return None
    try:
        raw = json.loads(storage.read_text(uri))
        if raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, this trainer reads format {FORMAT}")
        entries = [Entry(**e) for e in raw["entries"]]
        return Manifest(raw["job_name"], raw.get("run_id"), raw.get("spec", {}), entries)
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(
            f"{uri} is not a kubetune checkpoint manifest ({e}); delete {folder(output)} to start the job from step 0"
        ) from None


def write_manifest(output: str, manifest: Manifest) -> None:
    """Replace the manifest in one write: what a reader sees is the old one or the new one, never half."""
    storage.replace_text(storage.join(folder(output), MANIFEST), json.dumps(asdict(manifest), indent=2) + "\n")


# -- restarts ------------------------------------------------------------------------------
def count_start(output: str, job_name: str) -> int:
    """Record one more start of `job_name` in `<output>/checkpoints/restarts.json`; returns its starts so far,
    this one included (1: the first). Another job's record (an earlier submission to the same output) is replaced."""
    uri = storage.join(folder(output), RESTARTS)
    starts = 0
    if storage.exists(uri):
        try:
            raw = json.loads(storage.read_text(uri))
            if raw.get("job_name") == job_name:
                starts = int(raw.get("starts", 0))
        except (ValueError, TypeError, AttributeError):
            starts = 0  # unreadable: counted afresh
    starts += 1
    record = {"job_name": job_name, "starts": starts, "last_start": datetime.now(UTC).isoformat(timespec="seconds")}
    storage.write_text(uri, json.dumps(record, indent=2) + "\n")
    return starts


# -- writing -------------------------------------------------------------------------------
def publish(local_dir: Path, output: str, step: int) -> dict[str, dict[str, Any]]:
    """Upload every file of a local checkpoint folder to `<output>/checkpoints/step-N/`; returns their digests.

    Nothing is visible until `commit` names the checkpoint in the manifest."""
    files = digests(local_dir)
    storage.publish_dir(local_dir, storage.join(folder(output), step_name(step)))
    return files


def commit(output: str, entry: Entry, job_name: str, run_id: str | None, spec: dict[str, str], keep: int) -> Manifest:
    """Name `entry` as the latest checkpoint, keep the `keep` newest, then delete every other folder.

    A manifest of another job (a new submission with the same output) is replaced, and its
    checkpoints deleted with the rest."""
    try:
        old = read_manifest(output)
    except CheckpointError:
        old = None  # unreadable: replaced below, and its folders are pruned
    entries = old.entries if old is not None and old.job_name == job_name else []
    entries = [e for e in entries if e.step < entry.step] + [entry]
    manifest = Manifest(job_name, run_id, spec, entries[-keep:])
    write_manifest(output, manifest)
    prune(output, manifest)
    return manifest


def prune(output: str, manifest: Manifest) -> list[str]:
    """Delete every checkpoint folder the manifest does not name (older ones, half-uploaded ones)."""
    keep = {e.name for e in manifest.entries}
    removed = []
    for name in storage.folders(folder(output)):
        if name.startswith("step-") and name not in keep:
            storage.remove_tree(storage.join(folder(output), name))
            removed.append(name)
    return removed


def clear(output: str) -> None:
    """Remove every checkpoint of `output` (a fresh start of another job reusing it)."""
    storage.remove_tree(folder(output))


# -- reading -------------------------------------------------------------------------------
def fetch(output: str, entry: Entry, dest: Path) -> Path:
    """Download one checkpoint into `dest` and check every file's size and sha256; returns `dest`.

    A folder already fetched completely (a `.complete` marker) is reused: the other local ranks of
    a node wait for the first one and then find it there."""
    done = dest / ".complete"
    if done.exists():
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for rel, want in sorted(entry.files.items()):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            storage.get_file(storage.join(folder(output), entry.name, rel), target)
        except FileNotFoundError:
            raise CheckpointError(f"{storage.join(folder(output), entry.name, rel)} is missing") from None
        size, digest = target.stat().st_size, sha256_of(target)
        if size != want["size"] or digest != want["sha256"]:
            raise CheckpointError(
                f"{storage.join(folder(output), entry.name, rel)}: {size} bytes, sha256 {digest[:12]}…; the manifest "
                f"says {want['size']} bytes, sha256 {want['sha256'][:12]}…"
            )
    done.touch()
    return dest


def fetch_latest(output: str, manifest: Manifest, dest_root: Path, say: Any = print) -> tuple[Entry, Path]:
    """The newest checkpoint that downloads whole and intact; older ones are tried when it does not."""
    problems = []
    for entry in reversed(manifest.entries):
        try:
            return entry, fetch(output, entry, dest_root / entry.name)
        except CheckpointError as e:
            problems.append(str(e))
            say(f"checkpoint {entry.name} cannot be used: {e}; trying the one before")
    raise CheckpointError(
        f"no usable checkpoint in {folder(output)}: " + "; ".join(problems)
        + f". Delete {folder(output)} to start the job from step 0."
    )


def new_entry(step: int, world_size: int, files: dict[str, dict[str, Any]], rows_trained: int | None) -> Entry:
    return Entry(step_name(step), step, world_size, files, datetime.now(UTC).isoformat(timespec="seconds"),
                 rows_trained)
