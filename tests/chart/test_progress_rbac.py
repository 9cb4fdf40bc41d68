"""The progress channel in the chart: training's rank 0 and the export pod annotate their own Job
(`kubetune.io/progress`, trainer/tracking/progress.py) with a token whose Role allows `patch` on the submission's
training and export Jobs by name, and nothing else: no other verb, resource, group or object."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.chart.scenarios import (
    SCENARIOS,
    by_kind,
    component,
    env_of,
    pod_templates,
    render,
    values_file,
)

pytestmark = pytest.mark.usefixtures("helm_binary")


def training_job_name(docs: list[dict[str, Any]]) -> str:
    """The Job rank 0 annotates: the training Job, or the one Job a JobSet makes of its replicated Job (index 0)."""
    jobsets = by_kind(docs, "JobSet")
    if jobsets:
        [jobset] = jobsets
        [replicated] = jobset["spec"]["replicatedJobs"]
        return f"{jobset['metadata']['name']}-{replicated['name']}-0"
    [job] = [j for j in by_kind(docs, "Job") if component(j) == "training"]
    return job["metadata"]["name"]


@pytest.mark.parametrize("export", [True, False])
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_role_grants_only_patch_on_the_submissions_own_jobs(scenario: str, export: bool, tmp_path: Path) -> None:
    docs = render(scenario, values_file(tmp_path, {"export": {"enabled": export}}))
    jobs = [training_job_name(docs)]
    if export:
        [export_job] = [j for j in by_kind(docs, "Job") if component(j) == "export"]
        jobs.append(export_job["metadata"]["name"])
    [role] = by_kind(docs, "Role")
    assert role["rules"] == [{"apiGroups": ["batch"], "resources": ["jobs"], "resourceNames": jobs,
                              "verbs": ["patch"]}]
    assert by_kind(docs, "ClusterRole") == [] and by_kind(docs, "ClusterRoleBinding") == []
    [binding] = by_kind(docs, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    named = {}
    for where, pod in pod_templates(docs):
        [main] = [c for c in pod["spec"]["containers"] if c["name"] in ("trainer", "export")]
        named[component(pod)] = env_of(main)["KUBETUNE_PROGRESS_JOB"]
        assert pod["spec"]["automountServiceAccountToken"] is False, where
    # each pod annotates its own Job, one the Role names
    assert named == {"training": jobs[0]} | ({"export": jobs[1]} if export else {})


def test_the_jobset_annotates_the_job_it_makes(tmp_path: Path) -> None:
    docs = render("jobset", values_file(tmp_path, {"export": {"enabled": False}}))
    [jobset] = by_kind(docs, "JobSet")
    name = jobset["metadata"]["name"]
    [role] = by_kind(docs, "Role")
    assert role["rules"][0]["resourceNames"] == [f"{name}-node-0"]  # launcher/progress.py training_job_name


def test_the_network_policy_lets_the_pods_reach_the_api_server_unless_turned_off(tmp_path: Path) -> None:
    on = {"networkPolicy": {"enabled": True}, "export": {"enabled": False}}
    [policy] = by_kind(render("cpu", values_file(tmp_path, on)), "NetworkPolicy")
    assert {"protocol": "TCP", "port": 6443} in [p for rule in policy["spec"]["egress"] for p in rule.get("ports", [])]
    off = {"networkPolicy": {"enabled": True, "apiServerEgress": False}, "export": {"enabled": False}}
    [policy] = by_kind(render("cpu", values_file(tmp_path, off, "off.yaml")), "NetworkPolicy")
    assert {"protocol": "TCP", "port": 6443} not in [p for rule in policy["spec"]["egress"]
                                                      for p in rule.get("ports", [])]


@pytest.mark.parametrize("export", [True, False])
def test_progress_annotate_false_leaves_out_the_patches_and_without_an_export_every_token(
        export: bool, tmp_path: Path) -> None:
    docs = render("cpu", values_file(tmp_path, {"progress": {"annotate": False}, "export": {"enabled": export},
                                                "networkPolicy": {"enabled": True}}))
    roles = by_kind(docs, "Role")
    if export:  # rank 0 still starts the export Job: the Role names that Job alone
        [export_job] = [j for j in by_kind(docs, "Job") if component(j) == "export"]
        assert [r["rules"][0]["resourceNames"] for r in roles] == [[export_job["metadata"]["name"]]]
    else:
        assert roles == [] and by_kind(docs, "RoleBinding") == []
    for where, pod in pod_templates(docs):
        [main] = [c for c in pod["spec"]["containers"] if c["name"] in ("trainer", "export")]
        assert "KUBETUNE_PROGRESS_JOB" not in env_of(main), where
        volumes = {v["name"] for v in pod["spec"].get("volumes", [])}
        mounts = {m["name"] for m in main.get("volumeMounts", [])}
        wants_token = export and component(pod) == "training"
        assert ("kube-api-token" in volumes) == ("kube-api-token" in mounts) == wants_token, where
    [policy] = by_kind(docs, "NetworkPolicy")
    ports = [p for rule in policy["spec"]["egress"] for p in rule.get("ports", [])]
    assert ({"protocol": "TCP", "port": 6443} in ports) == export
