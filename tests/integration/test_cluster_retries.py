"""The `kubernetes` backend against an API server that is strict or misbehaves: every create and patch asks for
strict field validation; 429, 5xx answers and broken connections are tried again with backoff
(launcher/backends/kube_retry.py), a create never made twice; when the tries run out, one line naming the call."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.backends import kube_retry
from launcher.backends.kube_errors import ApiError
from launcher.backends.kubeconfig import connect
from launcher.backends.kubernetes import Cluster
from launcher.errors import UserError
from tests.integration.cluster_cli import Kube, cluster_spec, fake_cluster

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("helm_binary")]
LABELS = {"app.kubernetes.io/name": "kubetune"}
CONFIG_MAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": LABELS}, "data": {"a": "b"}}


@pytest.fixture
def kube(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Kube]:
    monkeypatch.setenv("KUBETUNE_K8S_BACKOFF", "0.01")  # for the calls made here, not through `launch`
    with fake_cluster(tmp_path) as k:
        yield k


def answers(kube: Kube, method: str, plural: str) -> list[str]:
    """How each `method` request on `plural` was answered: "" when handled, else the fault injected."""
    return [r.fault for r in kube.fake.requests if r.method == method and re.search(f"/{plural}(/|$)", r.path)]


def test_every_create_and_patch_asks_for_strict_field_validation(kube: Kube, tmp_path: Path) -> None:
    done = kube.run("submit", str(cluster_spec(tmp_path, export={"gguf": ["q8_0"]})))
    assert done.exit_code == 0, done.output
    writes = [r for r in kube.fake.requests if r.method in ("POST", "PATCH")]
    created = {r.path.rsplit("/", 1)[-1] for r in writes if r.method == "POST"}
    assert created == {"jobs", "serviceaccounts", "configmaps", "services", "roles", "rolebindings"}, created
    assert [r.method for r in writes].count("PATCH") == 1  # the training Job let go
    assert all(r.query.get("fieldValidation") == "Strict" for r in writes), [(r.method, r.path, r.query) for r in writes]


def test_an_unknown_field_is_refused_with_its_path(kube: Kube) -> None:
    cluster = Cluster(connect(kubeconfig=str(kube.config)))
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r"}, "rulez": []}
    with pytest.raises(UserError) as e:  # a Role goes as a custom object: the client does not check it, the server does
        cluster.create(role)
    assert e.value.message == ('roles.rbac.authorization.k8s.io ml/r: create failed with 400 Bad Request: Role in '
                               'version "v1" cannot be handled as a Role: strict decoding error: unknown field "rulez"')
    assert kube.fake.items("roles", "ml") == []
    cluster.create(CONFIG_MAP)
    with pytest.raises(UserError) as e:
        cluster.patch("ConfigMap", "x", {"dataz": {"c": "d"}})
    assert e.value.message.startswith("configmaps ml/x is invalid: patch: Invalid value: ")
    assert e.value.message.endswith('strict decoding error: unknown field "dataz"')
    assert kube.fake.get("configmaps", "ml", "x")["data"] == {"a": "b"}  # type: ignore[index]


def test_throttled_and_failing_calls_are_tried_again(kube: Kube, tmp_path: Path) -> None:
    kube.fake.fail("POST", "jobs", 429, retry_after=1)  # the training Job: throttled, made on the second try
    kube.fake.fail("POST", "configmaps", 503)
    kube.fake.fail("GET", "jobs", 500, 502, 504)  # reading the submission's state
    started = time.monotonic()
    done = kube.run("submit", str(cluster_spec(tmp_path)))
    assert done.exit_code == 0, done.output
    assert time.monotonic() - started >= 1.0  # Retry-After: 1 honoured (the backoff itself is 0.01 s here)
    [name] = kube.submitted()
    assert answers(kube, "POST", "jobs") == ["429", ""] and answers(kube, "POST", "configmaps") == ["503", ""]
    assert answers(kube, "GET", "jobs")[:4] == ["500", "502", "504", ""]
    assert kube.fake.get("configmaps", "ml", name) is not None
    assert "error" not in done.stderr


def test_a_create_whose_connection_broke_is_made_once(kube: Kube, tmp_path: Path) -> None:
    kube.fake.fail("POST", "configmaps", "reset-after")  # made, but the answer is lost: a look finds it ours
    kube.fake.fail("POST", "services", "reset")  # dropped before it was handled: sent again
    done = kube.run("submit", str(cluster_spec(tmp_path)))
    assert done.exit_code == 0, done.output
    [name] = kube.submitted()
    assert answers(kube, "POST", "configmaps") == [""] and answers(kube, "GET", "configmaps") == [""]
    assert answers(kube, "POST", "services") == ["reset", ""] and answers(kube, "GET", "services") == [""]
    assert kube.fake.get("configmaps", "ml", name) is not None and kube.fake.get("services", "ml", name) is not None


def test_a_look_after_a_broken_create_does_not_take_someone_elses_object(kube: Kube) -> None:
    cluster = Cluster(connect(kubeconfig=str(kube.config)))
    cluster.create({**CONFIG_MAP, "metadata": {"name": "x", "labels": {"team": "theirs"}}})
    kube.fake.fail("POST", "configmaps", "reset")
    with pytest.raises(ApiError) as e:  # there is an x, not with our labels: sent again, it already exists
        cluster.create(CONFIG_MAP)
    assert e.value.code == 409 and answers(kube, "POST", "configmaps") == ["", "reset", ""]


def test_when_the_tries_run_out_the_call_is_named(kube: Kube, tmp_path: Path) -> None:
    kube.fake.fail("POST", "jobs", *[503] * kube_retry.ATTEMPTS)
    done = kube.run("submit", str(cluster_spec(tmp_path)))
    assert done.exit_code == 2
    assert re.search(r"^error: jobs\.batch ml/bot-[a-z0-9]{5}: create failed with 503 Service Unavailable: injected "
                     r"fault: 503 \(tried 5 times in [0-9.]+ s\)$", done.stderr, re.M), done.stderr
    assert kube.fake.items("jobs", "ml") == [] and "Traceback" not in done.stderr
    kube.fake.fail("GET", "jobs", *[500] * kube_retry.ATTEMPTS)
    listed = kube.run("list")
    assert listed.exit_code == 2
    assert "namespace ml: list failed with 500 Internal Server Error: injected fault: 500 (tried 5 times" in listed.stderr


def test_a_bad_backoff_setting_is_named(kube: Kube) -> None:
    done = kube.run("list", env={"KUBETUNE_K8S_BACKOFF": "soon"})
    assert done.exit_code == 2 and "KUBETUNE_K8S_BACKOFF='soon'" in done.stderr


def test_the_waits_grow_with_jitter_within_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    waits: list[float] = []
    monkeypatch.setattr(kube_retry.time, "sleep", waits.append)
    monkeypatch.delenv("KUBETUNE_K8S_BACKOFF", raising=False)

    def failing() -> None:
        raise kube_retry.Passing(UserError("jobs.batch ml/x: get failed with 503"), processed=True)

    with pytest.raises(UserError) as e:
        kube_retry.retried(failing)
    assert len(waits) == kube_retry.ATTEMPTS - 1 and sum(waits) <= kube_retry.BUDGET
    for i, wait in enumerate(waits):  # 2 s, doubled each time, less up to half of it
        assert kube_retry.BACKOFF * 2**i / 2 <= wait <= kube_retry.BACKOFF * 2**i
    assert e.value.message.startswith("jobs.batch ml/x: get failed with 503 (tried 5 times in ")
    waits.clear()

    def throttled() -> None:  # a server asking for more than the budget has left: said at once
        raise kube_retry.Passing(UserError("x"), processed=False, retry_after=60)

    with pytest.raises(UserError) as e:
        kube_retry.retried(throttled)
    assert waits == [] and e.value.message == "x (tried 1 time in 0.0 s; the server asked to wait 60 s more)"
