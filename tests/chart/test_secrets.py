"""Credentials: S3 and MLflow from an existing Secret or from the chart's own, always through
`secretKeyRef`; the ServiceAccount's workload identity; and no secret string anywhere else."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from tests.chart.scenarios import (
    CHART,
    NAMESPACE,
    all_containers,
    by_kind,
    env_of,
    pod_templates,
    render,
    render_error,
    run_helm,
    scenario_file,
    scenario_values,
    values_file,
)

pytestmark = pytest.mark.usefixtures("helm_binary")

S3_ENV = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"]
MLFLOW_ENV = ["MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"]


def secret_strings(scenario: str) -> list[str]:
    ci = scenario_values(scenario)
    found = [v for section in ("s3", "mlflow") for k, v in ci.get(section, {}).items()
             if isinstance(v, str) and v and k not in ("existingSecret", "endpointUrl")]
    assert found
    return found


def test_existing_secrets_are_read_by_key_with_optional_keys_marked(tmp_path: Path) -> None:
    export = values_file(tmp_path, {"export": {"enabled": True}})
    docs = render("secrets-irsa", export)
    assert not by_kind(docs, "Secret")  # the platform's Secrets are used, none is rendered
    pods = list(pod_templates(docs))
    assert {p["metadata"]["labels"]["app.kubernetes.io/component"] for _, p in pods} == {"training", "export"}
    for where, pod in pods:
        for c in pod["spec"]["containers"]:
            refs = {name: v["secretKeyRef"] for name, v in env_of(c).items() if isinstance(v, dict)}
            assert list(refs) == S3_ENV + MLFLOW_ENV, where
            assert refs["AWS_ACCESS_KEY_ID"] == {"name": "team-s3", "key": "AWS_ACCESS_KEY_ID"}  # required
            assert refs["AWS_SECRET_ACCESS_KEY"] == {"name": "team-s3", "key": "AWS_SECRET_ACCESS_KEY"}
            assert refs["AWS_SESSION_TOKEN"] == {"name": "team-s3", "key": "AWS_SESSION_TOKEN", "optional": True}
            assert refs["AWS_ENDPOINT_URL"] == {"name": "team-s3", "key": "AWS_ENDPOINT_URL", "optional": True}
            assert refs["MLFLOW_TRACKING_USERNAME"] == {"name": "team-mlflow", "key": "user", "optional": True}
            assert refs["MLFLOW_TRACKING_PASSWORD"] == {"name": "team-mlflow", "key": "pass", "optional": True}
            assert refs["MLFLOW_TRACKING_TOKEN"] == {"name": "team-mlflow", "key": "token", "optional": True}


def test_irsa_and_workload_identity_annotate_the_service_account() -> None:
    for scenario, annotation in (("secrets-irsa", "eks.amazonaws.com/role-arn"),
                                 ("chart-secret", "iam.gke.io/gcp-service-account")):
        docs = render(scenario)
        (sa,) = by_kind(docs, "ServiceAccount")
        assert sa["metadata"]["annotations"] == scenario_values(scenario)["serviceAccount"]["annotations"]
        assert annotation in sa["metadata"]["annotations"]
        for where, pod in pod_templates(docs):
            assert pod["spec"]["serviceAccountName"] == sa["metadata"]["name"], where


def test_the_chart_renders_its_own_secret_from_values() -> None:
    docs = render("chart-secret")
    (secret,) = by_kind(docs, "Secret")
    ci = scenario_values("chart-secret")
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {
        "AWS_ACCESS_KEY_ID": ci["s3"]["accessKeyId"],
        "AWS_SECRET_ACCESS_KEY": ci["s3"]["secretAccessKey"],
        "AWS_SESSION_TOKEN": ci["s3"]["sessionToken"],
        "AWS_ENDPOINT_URL": ci["s3"]["endpointUrl"],
        "MLFLOW_TRACKING_TOKEN": ci["mlflow"]["token"],
    }
    assert secret["metadata"]["namespace"] == NAMESPACE
    name = secret["metadata"]["name"]
    (pod,) = [p for _, p in pod_templates(docs)]
    env = env_of(pod["spec"]["containers"][0])
    for var in decoded:  # only the keys given, none optional: they are in the Secret
        assert env[var] == {"secretKeyRef": {"name": name, "key": var}}
    assert not {"MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"} & set(env)


def test_no_secret_without_credentials() -> None:
    docs = render("cpu")
    assert not by_kind(docs, "Secret")
    for _, pod in pod_templates(docs):
        for c in all_containers(pod["spec"]):
            assert not {*S3_ENV, *MLFLOW_ENV} & set(env_of(c))


@pytest.mark.parametrize("hide_secret", [False, True])
def test_secret_strings_appear_only_inside_the_secret(hide_secret: bool, tmp_path: Path) -> None:
    """`helm install --dry-run` prints the manifests and the NOTES: the secret values (plain or
    base64) are in the Secret object and nowhere else."""
    export = values_file(tmp_path, {"export": {"enabled": True}})
    args = ["install", "sft-minio-w7r4t", str(CHART), "--namespace", NAMESPACE, "--dry-run=client",
            "-f", str(scenario_file("chart-secret")), "-f", str(export)]
    done = run_helm(*args, *(["--hide-secret"] if hide_secret else []))
    assert done.returncode == 0, done.stderr
    manifest, notes = done.stdout.split("\nNOTES:\n")
    assert "kubetune job sft-minio-w7r4t" in notes and "Secret sft-minio-w7r4t" in notes
    docs = [d for d in yaml.safe_load_all(manifest.split("MANIFEST:\n", 1)[1]) if d]
    assert {d["kind"] for d in docs} >= {"ConfigMap", "Job", "ServiceAccount"}
    assert any(d["kind"] == "Secret" for d in docs) is not hide_secret
    for value in secret_strings("chart-secret"):
        encoded = base64.b64encode(value.encode()).decode()
        assert value not in notes and encoded not in notes
        for doc in docs:
            text = yaml.safe_dump(doc)
            if doc["kind"] == "Secret":
                assert encoded in text
            else:
                assert value not in text and encoded not in text, f"{value} leaks into {doc['kind']}"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"s3": {"existingSecret": "team-s3", "accessKeyId": "AKIA"}},
         "s3.accessKeyId is set, but s3.existingSecret names the Secret \"team-s3\""),
        ({"mlflow": {"existingSecret": "team-mlflow", "token": "t"}},
         "mlflow.token is set, but mlflow.existingSecret names the Secret \"team-mlflow\""),
        ({"s3": {"accessKeyId": "AKIA"}}, "s3.accessKeyId and s3.secretAccessKey go together"),
        ({"s3": {"sessionToken": "t"}}, "s3.sessionToken needs s3.accessKeyId"),
        ({"mlflow": {"username": "u"}}, "mlflow.username and mlflow.password go together"),
        ({"mlflow": {"username": "u", "password": "p", "token": "t"}}, "give one way to authenticate"),
        ({"s3": {"existingSecret": "team-s3"}, "env": {"AWS_ACCESS_KEY_ID": "x"}},
         "env.AWS_ACCESS_KEY_ID is also read from the s3 credentials Secret"),
        ({"mlflow": {"secretKeys": {"token": "tok"}}},
         "mlflow.secretKeys.token is \"tok\", but mlflow.existingSecret is empty"),
        ({"s3": {"existingSecrett": "team-s3"}}, "additional properties 'existingSecrett' not allowed"),
        ({"s3": {"existingSecret": "Team_S3"}}, "/s3/existingSecret"),
        ({"s3": {"endpointUrl": "minio:9000"}}, "/s3/endpointUrl"),
    ],
)
def test_contradicting_credentials_are_refused(values: dict, message: str, tmp_path: Path) -> None:
    assert message in render_error("cpu", values_file(tmp_path, values))
