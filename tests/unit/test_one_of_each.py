"""Ideas that exist once (issue 15): the rank, the output folder's default, the spec arguments and the tokenizer
are answered by one function each, and the launcher and the pods get the same answer from it."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from launcher import datacheck
from launcher.resolve import for_local
from tests.models import tiny_model
from tests.resources import chat_template
from trainer import ranks, storage
from trainer.model import load as M
from trainer.spec.io import load_spec, spec_arguments, spec_from_dict


def test_ranks_come_from_the_launchers_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert (ranks.rank(), ranks.local_rank(), ranks.world_size(), ranks.local_world_size()) == (0, 0, 1, 1)
    assert ranks.is_main() and ranks.is_local_main()
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "8")
    assert (ranks.rank(), ranks.local_rank(), ranks.world_size()) == (5, 1, 8)
    assert not ranks.is_main() and not ranks.is_local_main()
    monkeypatch.setenv("RANK", "zero")
    with pytest.raises(ValueError, match="RANK='zero': not an integer"):
        ranks.is_main()


@pytest.mark.parametrize(("uri", "expected"), [
    (None, "{base}/runs/job"),
    ("out", "{base}/out"),
    ("/abs/out", "/abs/out"),
    ("file:///abs/out", "/abs/out"),
    ("s3://bucket/out", "s3://bucket/out"),
])
def test_the_output_folder_is_decided_once(uri: str | None, expected: str, tmp_path: Path) -> None:
    assert storage.output_location(uri, "job", tmp_path) == expected.format(base=tmp_path)


def test_the_launcher_resolves_the_output_folder_as_the_pods_do(tmp_path: Path) -> None:
    """`launch submit --local` writes output.uri into the resolved spec; the trainer and the export, given the
    unresolved spec and its folder, land in the same place."""
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text("name: job\nbase_model: org/model\ndata:\n  train: train.jsonl\n")
    spec = load_spec(spec_file)
    resolved = for_local(spec, tmp_path)
    assert resolved.output.uri == storage.output_location(spec.output.uri, spec.name, tmp_path)
    assert resolved.output.uri == str(tmp_path / "runs" / "job")


def test_both_pod_entry_points_share_the_spec_arguments() -> None:
    args = spec_arguments(argparse.ArgumentParser()).parse_args(
        ["--spec", "job.yaml", "--set", "training.max_steps=3", "--set", "name=x"])
    assert (args.spec, args.set, args.base_dir) == ("job.yaml", ["training.max_steps=3", "name=x"], None)


def test_the_data_check_opens_the_tokenizer_the_trainer_opens(tmp_path: Path) -> None:
    """`launch data validate` counts tokens with the tokenizer the trainer trains with: same template, pad
    token and ids."""
    (tmp_path / "gemma.jinja").write_text(chat_template("gemma3"))
    raw = {"name": "t", "base_model": str(tiny_model("llama")), "data": {"train": "unused.jsonl"},
           "resources": {"gpu": "none"}, "model": {"chat_template": "gemma.jinja"}}
    spec = spec_from_dict(raw)
    ours = datacheck.load_tokenizer(spec, tmp_path)
    pods = M.load_tokenizer(M.resolve_base_model(spec.base_model), spec, base_dir=tmp_path)
    chat = [{"role": "user", "content": "Where do pods run?"}, {"role": "assistant", "content": "On nodes."}]
    assert ours.chat_template == pods.chat_template == chat_template("gemma3")
    assert ours.pad_token == pods.pad_token is not None
    assert ours.apply_chat_template(chat, tokenize=True) == pods.apply_chat_template(chat, tokenize=True)
