"""`launch validate` and `launch render` of a matrix spec: every job, each labelled with its matrix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from launcher.cli import main
from launcher.helm import parse_manifests

pytestmark = pytest.mark.usefixtures("helm_binary")


def matrix_spec(folder: Path) -> Path:
    raw = {"name": "persona-${matrix.dimension}", "base_model": "org/model",
           "data": {"train": "s3://datasets/persona/${matrix.dimension}.jsonl"},
           "output": {"uri": "s3://runs/persona-${matrix.dimension}"}, "resources": {"gpu": "none"},
           "matrix": {"dimension": ["empathy", "humor", "directness"]}}
    path = folder / "persona.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_validate_lists_every_job(tmp_path: Path) -> None:
    done = CliRunner().invoke(main, ["validate", str(matrix_spec(tmp_path))])
    assert done.exit_code == 0, done.output
    lines = done.stdout.splitlines()
    assert lines[0].endswith("ok: a matrix of 3 jobs")
    assert [line.split(":")[0].strip() for line in lines[1:]] == ["persona-empathy", "persona-humor",
                                                                 "persona-directness"]


def test_render_renders_every_job_labelled_with_its_matrix(tmp_path: Path) -> None:
    done = CliRunner().invoke(main, ["render", str(matrix_spec(tmp_path)), "--set", "matrix.dimension=[empathy,humor]"])
    assert done.exit_code == 0, done.output
    jobs = [m for m in parse_manifests(done.stdout) if m["kind"] == "Job"]
    assert [j["metadata"]["labels"]["kubetune.dev/job"] for j in jobs] == ["persona-empathy", "persona-humor"]
    assert {j["metadata"]["labels"]["kubetune.dev/matrix"] for j in jobs} == {"persona"}


def test_a_plain_spec_has_no_matrix_label(tmp_path: Path) -> None:
    raw = yaml.safe_load(matrix_spec(tmp_path).read_text())
    del raw["matrix"]
    raw.update(name="persona", data={"train": "s3://d/t.jsonl"}, output={"uri": "s3://runs/persona"})
    (tmp_path / "plain.yaml").write_text(yaml.safe_dump(raw))
    done = CliRunner().invoke(main, ["render", str(tmp_path / "plain.yaml")])
    assert done.exit_code == 0, done.output
    job = next(m for m in parse_manifests(done.stdout) if m["kind"] == "Job")
    assert "kubetune.dev/matrix" not in job["metadata"]["labels"]
