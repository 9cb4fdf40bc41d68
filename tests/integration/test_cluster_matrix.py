"""A matrix spec against a cluster (the fake API server): one job per value, each with its own name,
data, MLflow run name and registered model, labelled so `launch list` groups them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.integration.cluster_cli import Kube, cluster_spec

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("helm_binary")]


def test_matrix_submits_one_labelled_job_per_value_and_list_groups_them(kube: Kube, tmp_path: Path) -> None:
    spec = cluster_spec(tmp_path, name="persona-${matrix.dimension}",
                        data={"train": "s3://datasets/persona/${matrix.dimension}/train.jsonl"},
                        output={"uri": "s3://runs/persona-${matrix.dimension}/"},
                        export={"gguf": ["q8_0"], "register": {"name": "persona-${matrix.dimension}"}},
                        matrix={"dimension": ["empathy", "humor"]})
    done = kube.run("submit", str(spec), "-o", "json")
    assert done.exit_code == 0, done.output
    results = json.loads(done.stdout)
    assert [r["spec_name"] for r in results] == ["persona-empathy", "persona-humor"]
    names = kube.submitted()
    assert len(names) == 2
    for name, dimension in zip(names, ("empathy", "humor"), strict=True):
        job = kube.fake.get("jobs", "ml", name)
        labels = job["metadata"]["labels"]
        assert labels["kubetune.dev/matrix"] == "persona" and labels["kubetune.dev/job"] == f"persona-{dimension}"
        resolved = yaml.safe_load(kube.fake.get("configmaps", "ml", name)["data"]["spec.yaml"])
        assert resolved["data"]["train"] == f"s3://datasets/persona/{dimension}/train.jsonl"
        assert resolved["export"]["register"]["name"] == f"persona-{dimension}"
        assert resolved["matrix"] == {"dimension": dimension}
        assert kube.fake.get("jobs", "ml", f"{name}-export")["metadata"]["labels"]["kubetune.dev/matrix"] == "persona"

    listed = json.loads(kube.run("list", "-o", "json").stdout)["groups"]
    (group,) = listed
    assert group["group"] == "persona" and group["by"] == "matrix"
    assert sorted(s["name"] for s in group["submissions"]) == sorted(names)


def test_a_matrix_job_that_would_collide_is_refused_before_anything_is_created(kube: Kube, tmp_path: Path) -> None:
    spec = cluster_spec(tmp_path, name="persona", matrix={"dimension": ["empathy", "humor"]})
    done = kube.run("submit", str(spec))
    assert done.exit_code == 2
    assert "name: must contain ${matrix.dimension}" in done.stderr
    assert kube.submitted() == []
