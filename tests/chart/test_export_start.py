"""The export Job's lifecycle in the chart alone (`helm install`, no launcher): rendered suspended, started by
training's rank 0 with a token that reaches the trainer and export containers only and may patch the submission's
own Jobs and nothing else (tests/chart/test_progress_rbac.py: the Role in every scenario)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chart.scenarios import (
    NAMESPACE,
    SCENARIOS,
    all_containers,
    by_kind,
    component,
    env_of,
    pod_templates,
    render,
    values_file,
)
from tests.chart.test_progress_rbac import training_job_name

pytestmark = pytest.mark.usefixtures("helm_binary")

TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


def export_on(tmp_path: Path, **more: object) -> Path:
    return values_file(tmp_path, {"export": {"enabled": True}, **more})


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_export_waits_suspended_and_rank_0_may_start_it_and_nothing_else(scenario: str, tmp_path: Path) -> None:
    docs = render(scenario, export_on(tmp_path))
    [export] = [j for j in by_kind(docs, "Job") if component(j) == "export"]
    name = export["metadata"]["name"]
    assert export["spec"]["suspend"] is True and "kueue.x-k8s.io/queue-name" not in export["metadata"]["labels"]
    assert "ownerReferences" not in export["metadata"]  # launch adds one to the training Job; the trainer drops it
    assert export["spec"]["ttlSecondsAfterFinished"] == 604800  # its own TTL (export.ttlSecondsAfterFinished)
    [role] = by_kind(docs, "Role")
    assert role["rules"] == [{"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["patch"],
                              "resourceNames": [training_job_name(docs), name]}]
    [binding] = by_kind(docs, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}
    [account] = by_kind(docs, "ServiceAccount") or [None]
    sa_name = account["metadata"]["name"] if account else "default"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa_name, "namespace": NAMESPACE}]
    assert account is None or account["automountServiceAccountToken"] is False
    for where, pod in pod_templates(docs):
        spec = pod["spec"]
        assert spec["automountServiceAccountToken"] is False, where  # CKV_K8S_38: no automounted token anywhere
        tokens = [v for v in spec["volumes"] if any("serviceAccountToken" in s for s in
                                                    (v.get("projected") or {}).get("sources", []))]
        for c in all_containers(spec):
            mounted = [m for m in c.get("volumeMounts", []) if m["mountPath"] == TOKEN_PATH]
            env = env_of(c)
            if c in spec["containers"]:  # the trainer and the export container, not an init container
                assert mounted == [{"name": "kube-api-token", "mountPath": TOKEN_PATH, "readOnly": True}], where
                assert (env.get("KUBETUNE_EXPORT_JOB") == name) == (component(pod) == "training"), where
            else:
                assert mounted == [] and "KUBETUNE_EXPORT_JOB" not in env, (where, c["name"])
        [token] = tokens
        sources = token["projected"]["sources"]
        assert sources[0] == {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}}
        assert sources[1]["configMap"]["name"] == "kube-root-ca.crt"
        assert sources[2]["downwardAPI"]["items"][0]["fieldRef"]["fieldPath"] == "metadata.namespace"


def test_without_an_export_the_role_names_the_training_job_alone(tmp_path: Path) -> None:
    docs = render("cpu", values_file(tmp_path, {"export": {"enabled": False}}))
    [role] = by_kind(docs, "Role")
    assert role["rules"][0]["resourceNames"] == [training_job_name(docs)]
    for _where, pod in pod_templates(docs):
        for c in all_containers(pod["spec"]):
            assert "KUBETUNE_EXPORT_JOB" not in env_of(c)


def test_a_platform_service_account_is_the_one_bound(tmp_path: Path) -> None:
    docs = render("cpu", export_on(tmp_path, serviceAccount={"create": False, "name": "ml-runner"}))
    [binding] = by_kind(docs, "RoleBinding")
    assert binding["subjects"][0]["name"] == "ml-runner" and by_kind(docs, "ServiceAccount") == []


def test_with_kueue_the_export_enters_the_queue_only_when_training_succeeded(tmp_path: Path) -> None:
    docs = render("kueue", export_on(tmp_path))
    jobs = {component(j): j for j in by_kind(docs, "Job")}
    assert jobs["training"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert "kueue.x-k8s.io/queue-name" not in jobs["export"]["metadata"]["labels"]  # Kueue would start it at once
    [trainer] = jobs["training"]["spec"]["template"]["spec"]["containers"]
    assert env_of(trainer)["KUBETUNE_EXPORT_QUEUE"] == "team-a"  # rank 0 adds the label: then Kueue admits it
