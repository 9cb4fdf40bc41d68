"""The chart's constructs under `launch submit --local`: credentials from the Secret the chart
renders reach the pod processes; an existing (cluster) Secret and a JobSet are clear user errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from launcher import client, helm
from launcher.backends.local import plan
from launcher.errors import UserError
from tests.chart.scenarios import values_file
from tests.chat import ONE_ROW

pytestmark = pytest.mark.usefixtures("helm_binary")


def local_spec(folder: Path) -> Path:
    (folder / "train.jsonl").write_text(ONE_ROW)
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump({"name": "creds", "base_model": "org/model", "data": {"train": "train.jsonl"},
                                    "resources": {"gpu": "none", "nodes": 1}}))
    return spec


def manifests(folder: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    sub = client.prepare(local_spec(folder), local=True)
    return helm.parse_manifests(client.render(sub, [values_file(folder, values)]))


def test_credentials_from_the_charts_secret_reach_the_process(tmp_path: Path) -> None:
    docs = manifests(tmp_path, {"s3": {"accessKeyId": "local-key", "secretAccessKey": "local-secret",
                                       "endpointUrl": "http://127.0.0.1:9000"},
                                "mlflow": {"username": "me", "password": "pw"}})
    (pod,) = plan(docs, tmp_path / "pods", cwd=tmp_path)
    assert pod.env["AWS_ACCESS_KEY_ID"] == "local-key"
    assert pod.env["AWS_SECRET_ACCESS_KEY"] == "local-secret"
    assert pod.env["AWS_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    assert (pod.env["MLFLOW_TRACKING_USERNAME"], pod.env["MLFLOW_TRACKING_PASSWORD"]) == ("me", "pw")
    assert "AWS_SESSION_TOKEN" not in pod.env and "MLFLOW_TRACKING_TOKEN" not in pod.env


def test_optional_and_missing_keys_of_a_rendered_secret(tmp_path: Path) -> None:
    docs = manifests(tmp_path, {"mlflow": {"token": "tok"}})
    (job,) = [d for d in docs if d["kind"] == "Job"]
    env = job["spec"]["template"]["spec"]["containers"][0]["env"]
    secret = next(d["metadata"]["name"] for d in docs if d["kind"] == "Secret")
    env.append({"name": "EXTRA", "valueFrom": {"secretKeyRef": {"name": secret, "key": "NOPE", "optional": True}}})
    (pod,) = plan(docs, tmp_path / "pods", cwd=tmp_path)
    assert pod.env["MLFLOW_TRACKING_TOKEN"] == "tok" and "EXTRA" not in pod.env
    env[-1]["valueFrom"]["secretKeyRef"].pop("optional")
    with pytest.raises(UserError, match=f"env EXTRA: Secret '{secret}' has no key 'NOPE'"):
        plan(docs, tmp_path / "pods2", cwd=tmp_path)
    env[-1] = {"name": "EXTRA", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    with pytest.raises(UserError, match="env EXTRA: fieldRef needs a cluster"):
        plan(docs, tmp_path / "pods3", cwd=tmp_path)


def test_an_existing_secret_cannot_be_read_locally(tmp_path: Path) -> None:
    docs = manifests(tmp_path, {"s3": {"existingSecret": "team-s3"}})
    with pytest.raises(UserError, match="env AWS_ACCESS_KEY_ID: Secret 'team-s3' is not rendered by the chart") as e:
        plan(docs, tmp_path / "pods", cwd=tmp_path)
    assert "s3.existingSecret" in e.value.message


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"jobset": {"enabled": True}}, "the chart rendered a JobSet"),
        ({"s3": {"existingSecret": "team-s3"}}, "Secret 'team-s3' is not rendered by the chart"),
    ],
)
def test_launch_submit_local_refuses_cleanly(values: dict[str, Any], message: str, tmp_path: Path) -> None:
    spec = local_spec(tmp_path)
    extra = values_file(tmp_path, values)
    env = {k: v for k, v in os.environ.items() if k != "KUBETUNE_DEBUG"}
    done = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "submit", "--local", str(spec), "-f", str(extra)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert message in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr
