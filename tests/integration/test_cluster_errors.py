"""Every way a cluster says no, as one line naming namespace/name and the cause (exit 2, no traceback unless
KUBETUNE_DEBUG=1); kubeconfig mistakes; and the fake API server refusing malformed bodies, as the real one does."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from launcher.backends.kube_submit import check
from launcher.backends.kubeconfig import connect
from launcher.backends.kubernetes import Cluster
from launcher.errors import UserError
from tests.integration.cluster_cli import Kube, cluster_spec, fake_cluster
from tests.integration.fake_kube import TOKEN, FakeKube

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("helm_binary")]
CONFIG_MAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}}


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def test_forbidden_names_the_verb_and_resource(kube: Kube) -> None:
    kube.fake.deny("list", "jobs.batch")
    done = kube.process("list")
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert "namespace ml: forbidden: you may not list jobs.batch in namespace ml" in line
    assert "a Role granting `list` on `jobs.batch`" in line and 'User "alice@example.com" cannot list' in line


def test_no_right_to_read_jobsets_means_there_are_none(kube: Kube, tmp_path: Path) -> None:
    kube.fake.deny("list", "jobsets.jobset.x-k8s.io")
    kube.fake.deny("get", "jobsets.jobset.x-k8s.io")
    assert kube.run("submit", str(cluster_spec(tmp_path))).exit_code == 0
    listed = kube.run("list")
    assert listed.exit_code == 0 and kube.submitted()[0] in listed.stdout
    missing = kube.run("status", "bot-nope1")
    assert missing.exit_code == 2 and "no kubetune job bot-nope1 in namespace ml" in missing.stderr


def test_kubetune_debug_shows_the_traceback(kube: Kube) -> None:
    kube.fake.deny("list", "jobs.batch")
    done = kube.process("list", env={"KUBETUNE_DEBUG": "1"})
    assert done.returncode != 0 and "Traceback" in done.stderr and "forbidden" in done.stderr


def test_invalid_objects_come_back_with_their_fields(kube: Kube, tmp_path: Path) -> None:
    values = tmp_path / "labels.yaml"
    values.write_text(yaml.safe_dump({"podLabels": {"team": "not valid!"}}))
    done = kube.process("submit", str(cluster_spec(tmp_path)), "-f", str(values))
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert "jobs.batch ml/bot-" in line and "is invalid: spec.template.metadata.labels: Invalid value: 'not valid!'" in line
    assert kube.fake.items("jobs", "ml") == []  # the API refused it: nothing was created


def test_already_exists(kube: Kube) -> None:
    cluster = Cluster(connect(kubeconfig=str(kube.config)))
    cluster.create(CONFIG_MAP)
    with pytest.raises(UserError) as e:
        cluster.create(CONFIG_MAP)
    assert e.value.message == 'configmaps ml/x: already exists (configmaps "x" already exists)'


def test_an_object_the_client_refuses_names_its_fields(kube: Kube) -> None:
    cluster = Cluster(connect(kubeconfig=str(kube.config)))
    with pytest.raises(UserError) as e:
        cluster.create({**CONFIG_MAP, "metadata": {"name": "x", "labelz": {"a": "b"}}})
    assert "configmaps ml/x: the rendered object is not valid for the Kubernetes API" in e.value.message
    assert any(p.startswith("metadata.labelz: ") for p in e.value.problems), e.value.problems
    assert not [r for r in kube.fake.requests if r.method == "POST"]  # refused before it was sent


def test_bad_credentials(kube: Kube, tmp_path: Path) -> None:
    kube.fake.kubeconfig(kube.config, token="expired")
    done = kube.process("list")
    assert done.returncode == 2
    assert "rejected your credentials (401 Unauthorized): log in again" in one_error_line(done.stderr)


def test_unreachable_server_names_its_url(tmp_path: Path) -> None:
    with fake_cluster(tmp_path) as kube:
        url = kube.fake.url
    done = kube.process("status", "bot-12345")
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert f"cannot reach the Kubernetes API server {url} (context fake)" in line and "connection refused" in line


def test_kubeconfig_mistakes_are_explained(kube: Kube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    done = kube.process("list", "--context", "prod")
    assert done.returncode == 2 and "--context prod: no such context" in done.stderr and "fake, other" in done.stderr
    with pytest.raises(UserError) as e:
        connect(kubeconfig=str(tmp_path / "nope"))
    assert e.value.message == f"--kubeconfig {tmp_path / 'nope'}: no such file"
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not running in a pod
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(UserError) as e:
        connect()
    assert "no kubeconfig at ~/.kube/config: pass --kubeconfig FILE or set KUBECONFIG" in e.value.message


def test_kubeconfig_from_the_environment_merges_files(kube: Kube, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    other = tmp_path / "second"
    other.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "clusters": [], "users": [],
                                     "contexts": [{"name": "elsewhere", "context": {"cluster": "fake", "user": "alice",
                                                                                    "namespace": "far"}}]}))
    monkeypatch.setenv("KUBECONFIG", f"{kube.config}:{other}")
    target = connect(context="elsewhere")
    assert (target.context, target.namespace, target.server) == ("elsewhere", "far", kube.fake.url)
    assert connect().namespace == "ml" and connect(namespace="given").namespace == "given"


def test_rendered_objects_launch_cannot_create_are_refused_by_name() -> None:
    extra = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "np"}}
    elsewhere = {**CONFIG_MAP, "metadata": {"name": "cm", "namespace": "prod"}}
    with pytest.raises(UserError) as e:
        check([extra, elsewhere], "ml")
    assert e.value.problems[0].startswith("PodDisruptionBudget np: launch cannot create a PodDisruptionBudget")
    assert e.value.problems[1] == ("ConfigMap cm: rendered for namespace prod, but this submission goes to "
                                   "namespace ml")


def test_cluster_options_are_not_for_local_runs(kube: Kube, tmp_path: Path) -> None:
    done = kube.process("submit", "--local", str(cluster_spec(tmp_path)), "-o", "json")
    assert done.returncode == 2 and "--kubeconfig, -o: for cluster submissions; --local runs" in done.stderr
    dry = kube.process("submit", "--dry-run", str(cluster_spec(tmp_path)), "--wait")
    assert dry.returncode == 2 and "--kubeconfig, --wait: for cluster submissions; --dry-run submits nothing" in dry.stderr


def test_a_bad_poll_interval_is_named(kube: Kube, tmp_path: Path) -> None:
    done = kube.process("submit", str(cluster_spec(tmp_path)), "--wait", env={"KUBETUNE_POLL_SECONDS": "soon"})
    assert done.returncode == 2 and "KUBETUNE_POLL_SECONDS='soon'" in done.stderr


# -- the fake API server is strict like the real one ----------------------------------------------


def post(fake: FakeKube, path: str, body: dict, token: str = TOKEN) -> tuple[int, dict]:
    request = urllib.request.Request(f"{fake.url}{path}", json.dumps(body).encode(), method="POST", headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_the_fake_refuses_malformed_bodies_with_every_cause() -> None:
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": {
        "completions": "two", "template": {"spec": {"restartPolicy": "Never",
                                                    "containers": [{"name": "c", "image": "i", "colour": "red"}]}}}}
    with FakeKube() as fake:
        code, status = post(fake, "/apis/batch/v1/namespaces/ml/jobs", job)
        assert code == 422 and status["kind"] == "Status" and status["reason"] == "Invalid"
        fields = {c["field"] for c in status["details"]["causes"]}
        assert fields == {"spec.completions"}, status  # the unknown `colour` is dropped, without fieldValidation
        code, status = post(fake, "/apis/batch/v1/namespaces/ml/jobs?fieldValidation=Strict", job)
        assert code == 400 and status["reason"] == "BadRequest", status
        assert status["message"] == ('Job in version "v1" cannot be handled as a Job: strict decoding error: '
                                     'unknown field "spec.template.spec.containers[0].colour"')
        code, status = post(fake, "/api/v1/namespaces/ml/configmaps", CONFIG_MAP, token="wrong")
        assert code == 401 and status["reason"] == "Unauthorized"
        code, status = post(fake, "/api/v1/namespaces/ml/configmaps", {**CONFIG_MAP, "kind": "Secret"})
        assert code == 400 and status["reason"] == "BadRequest"
        assert post(fake, "/api/v1/namespaces/ml/configmaps", CONFIG_MAP)[0] == 201
        code, status = post(fake, "/api/v1/namespaces/ml/configmaps", CONFIG_MAP)
        assert code == 409 and status["reason"] == "AlreadyExists" and status["details"]["name"] == "x"
        code, status = post(fake, "/apis/jobset.x-k8s.io/v1alpha2/namespaces/ml/jobsets", {})
        assert code == 404  # the JobSet CRD is not installed in this fake
