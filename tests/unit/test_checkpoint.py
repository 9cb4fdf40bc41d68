"""Checkpoints in an output folder: visible only when the manifest names them, verified on fetch,
pruned; the resume decision; the data position that travels on each trained batch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from torch.utils.data import DataLoader

from tests.resources import tokenizer_for
from trainer.data import Collator
from trainer.data.stream import TrainStream
from trainer.spec.io import flatten, spec_from_dict
from trainer.spec.job import JobSpec
from trainer.train import checkpoint
from trainer.train.datastate import TAG, Tagged, TaggedCollator
from trainer.train.resume import ResumeError, plan


def local_checkpoint(folder: Path, step: int, size: int = 1000) -> Path:
    """What the Trainer leaves in a checkpoint folder, in miniature."""
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * (size // 256) + bytes([step % 256]))
    (folder / "optimizer.pt").write_bytes(b"o" * (size + step))
    (folder / "sub").mkdir()
    (folder / "sub" / "rng_state_0.pth").write_bytes(b"r" * step)
    (folder / checkpoint.STATE).write_text(json.dumps({"step": step}))
    return folder


def save(tmp: Path, output: str, step: int, job: str = "job-abcde", keep: int = 2) -> checkpoint.Manifest:
    files = checkpoint.publish(local_checkpoint(tmp / f"local-{job}-{step}", step), output, step)
    entry = checkpoint.new_entry(step, 1, files, rows_trained=step * 4)
    return checkpoint.commit(output, entry, job, "run-1", {"training.learning_rate": "0.0002"}, keep)


def test_a_checkpoint_is_visible_only_once_the_manifest_names_it(tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    files = checkpoint.publish(local_checkpoint(tmp_path / "local", 10), output, 10)
    assert (tmp_path / "out" / "checkpoints" / "step-000010" / "sub" / "rng_state_0.pth").is_file()
    assert checkpoint.read_manifest(output) is None  # uploaded, not committed: no checkpoint yet
    entry = checkpoint.new_entry(10, 2, files, rows_trained=40)
    checkpoint.commit(output, entry, "job-abcde", "run-1", {"a": "1"}, keep=2)
    manifest = checkpoint.read_manifest(output)
    assert manifest is not None and manifest.latest == entry and manifest.job_name == "job-abcde"
    assert manifest.run_id == "run-1" and manifest.latest.world_size == 2
    assert files["sub/rng_state_0.pth"] == {"size": 10, "sha256": checkpoint.sha256_of(tmp_path / "local" / "sub" /
                                                                                        "rng_state_0.pth")}
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["latest.json", "step-000010"]


def test_commit_keeps_the_newest_and_deletes_older_and_half_uploaded_ones(tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    for step in (10, 20, 30):
        save(tmp_path, output, step)
    checkpoint.publish(local_checkpoint(tmp_path / "half", 40), output, 40)  # killed before its commit
    manifest = save(tmp_path, output, 50)
    assert [e.step for e in manifest.entries] == [30, 50]
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == [
        "latest.json", "step-000030", "step-000050"]


def test_another_jobs_checkpoints_are_replaced_at_the_first_commit(tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    save(tmp_path, output, 10, job="job-old00")
    manifest = save(tmp_path, output, 4, job="job-new00")
    assert manifest.job_name == "job-new00" and [e.step for e in manifest.entries] == [4]
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["latest.json", "step-000004"]


def test_fetch_checks_every_file_and_falls_back_to_the_checkpoint_before(tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    save(tmp_path, output, 10)
    manifest = save(tmp_path, output, 20)
    (tmp_path / "out" / "checkpoints" / "step-000020" / "optimizer.pt").write_bytes(b"truncated")
    said: list[str] = []
    entry, local = checkpoint.fetch_latest(output, manifest, tmp_path / "fetched", say=said.append)
    assert entry.step == 10 and json.loads((local / checkpoint.STATE).read_text()) == {"step": 10}
    assert (local / "sub" / "rng_state_0.pth").read_bytes() == b"r" * 10
    assert "step-000020/optimizer.pt: 9 bytes" in said[0] and "trying the one before" in said[0]
    (tmp_path / "out" / "checkpoints" / "step-000010" / "sub" / "rng_state_0.pth").unlink()
    with pytest.raises(checkpoint.CheckpointError, match=r"no usable checkpoint .* Delete .*checkpoints to start"):
        checkpoint.fetch_latest(output, manifest, tmp_path / "again", say=said.append)
    assert "step-000010/sub/rng_state_0.pth is missing" in said[-1]


def test_a_fetched_checkpoint_is_reused_by_the_other_ranks_of_a_node(tmp_path: Path) -> None:
    output = str(tmp_path / "out")
    manifest = save(tmp_path, output, 10)
    assert manifest.latest is not None
    first = checkpoint.fetch(output, manifest.latest, tmp_path / "node" / "step-000010")
    (tmp_path / "out" / "checkpoints" / "step-000010" / "optimizer.pt").unlink()  # not read again
    assert checkpoint.fetch(output, manifest.latest, tmp_path / "node" / "step-000010") == first


def test_all_checkpoint_io_goes_through_storage_and_its_retries(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Every read, write, listing and delete of checkpoints gets trainer/storage.py's filesystem (for S3: botocore's
    retries and timeouts), never a bare fsspec one."""
    from trainer import storage

    seen: list[str] = []
    real = storage.filesystem

    def recording(uri: str, extra: dict[str, Any] | None = None) -> Any:
        seen.append(uri)
        return real(uri, extra)

    monkeypatch.setattr(storage, "filesystem", recording)
    output = str(tmp_path / "out")
    for step in (10, 20, 30):
        manifest = save(tmp_path, output, step)
    checkpoint.fetch(output, manifest.entries[-1], tmp_path / "fetched")
    root = f"{output}/checkpoints"
    assert f"{root}/step-000030/optimizer.pt" in seen  # the fetch of each file
    assert root in seen and f"{root}/step-000010" in seen  # the listing and the delete of a pruned checkpoint
    assert not (tmp_path / "out" / "checkpoints" / "step-000010").exists()
    assert not hasattr(checkpoint, "url_to_fs") and not hasattr(checkpoint, "fsspec")


def test_an_unreadable_manifest_says_what_to_do(tmp_path: Path) -> None:
    (tmp_path / "out" / "checkpoints").mkdir(parents=True)
    (tmp_path / "out" / "checkpoints" / "latest.json").write_text("{half a fi")
    with pytest.raises(checkpoint.CheckpointError, match=r"not a kubetune checkpoint manifest .* delete .*checkpoints"):
        checkpoint.read_manifest(str(tmp_path / "out"))


# -- the resume decision ----------------------------------------------------------------------
def job_spec(**training: Any) -> JobSpec:
    return spec_from_dict({"name": "job", "base_model": "org/model", "data": {"train": "t.jsonl"},
                           "training": {"max_steps": 20, **training}, "resources": {"gpu": "none"}})


def manifest_of(spec: JobSpec, job: str = "job-abcde", world: int = 2) -> checkpoint.Manifest:
    entry = checkpoint.new_entry(8, world, {}, rows_trained=64)
    return checkpoint.Manifest(job, "run-1", flatten(spec), [entry])


def test_resume_only_the_same_job_and_only_what_it_trained() -> None:
    spec = job_spec()
    saved = manifest_of(spec)
    assert plan(None, "job-abcde", flatten(spec), 2, "ddp") is None
    assert plan(saved, "job-other", flatten(spec), 2, "ddp") is None  # another submission starts afresh
    assert plan(saved, "job-abcde", flatten(spec), 2, "ddp") is saved
    where = spec_from_dict({**spec.model_dump(mode="json"), "resources": {"gpu": "none", "nodes": 3},
                            "training": {**spec.training.model_dump(), "save_steps": 5, "logging_steps": 2}})
    assert plan(saved, "job-abcde", flatten(where), 3, "ddp") is saved  # where and how often: may change
    other = job_spec(learning_rate=1e-3, seed=7)
    with pytest.raises(ResumeError) as e:
        plan(saved, "job-abcde", flatten(other), 2, "ddp")
    assert "training.learning_rate: 0.0002 then, 0.001 now" in str(e.value)
    assert "training.seed: 42 then, 7 now" in str(e.value) and "another output.uri" in str(e.value)


def test_sharded_optimizer_states_resume_on_the_same_world_size_only() -> None:
    spec = job_spec(strategy="zero2")
    assert plan(manifest_of(spec, world=2), "job-abcde", flatten(spec), 2, "zero2") is not None
    with pytest.raises(ResumeError, match=r"written by 2 ranks and this run has 4: .*`zero2`.*Resume with 2 ranks"):
        plan(manifest_of(spec, world=2), "job-abcde", flatten(spec), 4, "zero2")


# -- the data position on each batch -----------------------------------------------------------
def test_the_position_on_a_trained_batch_is_where_the_stream_continues(tmp_path: Path) -> None:
    """A loader fetching ahead (as accelerate's does) must not move the saved position past the trained rows."""
    rows = [{"messages": [{"role": "user", "content": f"question {i} " + "word " * (i % 9)},
                          {"role": "assistant", "content": f"answer {i}"}]} for i in range(40)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = spec_from_dict({"name": "pos", "base_model": "org/model", "data": {"train": str(tmp_path / "train.jsonl"),
                           "max_seq_len": 64}, "training": {"max_steps": 10}})
    tok = tokenizer_for("qwen2")
    collate = TaggedCollator(Collator.for_spec(spec, tok))
    stream = TrainStream(spec, tok)
    batches = iter(DataLoader(Tagged(stream, 3), batch_size=3, collate_fn=collate))
    trained = [next(batches) for _ in range(4)]
    ahead = next(batches)  # fetched, not trained
    tag = trained[-1].pop(TAG)
    assert tag["rows"] == 3 and tag["state"] != stream.state_dict()  # the stream itself has moved on
    resumed = TrainStream(spec, tok)
    resumed.load_state_dict({"ranks": [tag["state"]]})
    again = next(iter(DataLoader(Tagged(resumed, 3), batch_size=3, collate_fn=collate)))
    assert again["input_ids"].tolist() == ahead["input_ids"].tolist()


def test_launch_resumes_a_local_job_only_from_its_own_checkpoints(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from launcher.cli import main
    from launcher.client import resume_problems

    output = str(tmp_path / "out")
    assert "holds no checkpoint, so job job-abcde cannot resume" in resume_problems("job-abcde", output)[0]
    save(tmp_path, output, 10, job="job-abcde")
    assert resume_problems("job-abcde", output) == []
    assert resume_problems("job-fghij", output) == [
        f"the checkpoints in {tmp_path / 'out' / 'checkpoints'} are job job-abcde's (step 10), not job-fghij's: "
        "--resume job-abcde continues that one"]
    assert resume_problems("job-abcde", "s3://bucket/out") == []  # the trainer decides: no S3 client needed here
    done = CliRunner().invoke(main, ["submit", str(tmp_path / "job.yaml"), "--resume", "job-abcde", "--dry-run"])
    assert done.exit_code == 2 and "--resume: runs an earlier submission again; --dry-run submits nothing" in done.output


def test_a_text_file_with_a_byte_order_mark_reads_without_it(tmp_path: Path) -> None:
    """A chat template or spec saved by Notepad starts with U+FEFF: it must not reach the rendered prompts."""
    from trainer import storage

    path = tmp_path / "template.jinja"
    path.write_bytes("\ufeff{{ messages[0].content }}".encode())
    assert storage.read_text(str(path)) == "{{ messages[0].content }}"
    path.write_text("plain")
    assert storage.read_text(str(path)) == "plain"
