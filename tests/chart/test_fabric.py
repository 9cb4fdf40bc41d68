"""The RDMA fabric opt-ins (`fabric.*`, docs/chart.md "Fabric: EFA and InfiniBand"): each reaches the
training pods (the trainer and the `preflight` init container, which runs NCCL too) and never the
export pod; each is off by default, and off the chart renders exactly what it rendered before
("restricted"); the Pod Security level each one needs is the one the docs name."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from tests.chart.scenarios import (
    all_containers,
    by_kind,
    pod_templates,
    render,
    render_error,
    training_pod,
    values_file,
)
from tests.chart.test_security import baseline_violations, pod_security_level, restricted_violations

pytestmark = pytest.mark.usefixtures("helm_binary")

OFF = {"fabric": {"ipcLock": False, "hostNetwork": False, "runtimeClassName": "", "resources": {},
                  "volumes": [], "volumeMounts": [], "podAnnotations": {}}}
EFA = {"vpc.amazonaws.com/efa": 32, "hugepages-2Mi": "5120Mi"}


def export_pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (pod,) = [t for _, t in pod_templates(docs) if t["metadata"]["labels"]["app.kubernetes.io/component"] == "export"]
    return pod


def rendered(tmp_path: Path, fabric: dict[str, Any], scenario: str = "h100-zero3") -> list[dict[str, Any]]:
    """A multi-node GPU scenario (so the preflight init container is there) with the export on."""
    return render(scenario, values_file(tmp_path, {"fabric": fabric, "export": {"enabled": True}}))


def training_containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    containers = all_containers(training_pod(docs)["spec"])
    assert [c["name"] for c in containers] == ["preflight", "trainer"]
    return containers


@pytest.mark.parametrize("scenario", ["cpu", "h100-zero3", "jobset"])
def test_off_by_default_and_nothing_changes(scenario: str, tmp_path: Path) -> None:
    export = values_file(tmp_path, {"export": {"enabled": True}}, "export.yaml")
    plain = render(scenario, export)
    assert render(scenario, export, values_file(tmp_path, OFF)) == plain  # the defaults, spelt out
    for where, pod in pod_templates(plain):
        spec = pod["spec"]
        assert not {"hostNetwork", "dnsPolicy", "runtimeClassName"} & set(spec), where
        assert restricted_violations(spec) == [], where
        for c in all_containers(spec):
            assert "add" not in c["securityContext"]["capabilities"], where
            assert not any("/" in r and r != "nvidia.com/gpu" for r in c.get("resources", {}).get("limits", {})), where


def test_ipc_lock_is_added_to_the_nccl_containers_only(tmp_path: Path) -> None:
    docs = rendered(tmp_path, {"ipcLock": True})
    for c in training_containers(docs):
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}, c["name"]
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
    (export,) = export_pod(docs)["spec"]["containers"]
    assert export["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    # not in baseline's list either: only a privileged namespace admits it
    assert pod_security_level(training_pod(docs)["spec"]) == "privileged"
    assert pod_security_level(export_pod(docs)["spec"]) == "restricted"


def test_ipc_lock_keeps_what_the_platform_added(tmp_path: Path) -> None:
    extra = values_file(tmp_path, {"securityContext": {"allowPrivilegeEscalation": False,
                                                       "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}},
                        "sc.yaml")
    docs = render("h100-zero3", extra, values_file(tmp_path, {"fabric": {"ipcLock": True}}))
    for c in training_containers(docs):
        assert c["securityContext"]["capabilities"]["add"] == ["NET_BIND_SERVICE", "IPC_LOCK"]


def test_host_network_comes_with_the_dns_policy_that_still_resolves_rank_0(tmp_path: Path) -> None:
    docs = rendered(tmp_path, {"hostNetwork": True})
    spec = training_pod(docs)["spec"]
    assert spec["hostNetwork"] is True
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["subdomain"]  # rank 0 stays <job>-0.<job> behind the headless Service
    assert baseline_violations(spec) == ["pod: hostNetwork"]
    assert pod_security_level(spec) == "privileged"
    assert not {"hostNetwork", "dnsPolicy"} & set(export_pod(docs)["spec"])


def test_runtime_class_stays_restricted(tmp_path: Path) -> None:
    docs = rendered(tmp_path, {"runtimeClassName": "nvidia"})
    assert training_pod(docs)["spec"]["runtimeClassName"] == "nvidia"
    assert "runtimeClassName" not in export_pod(docs)["spec"]
    assert pod_security_level(training_pod(docs)["spec"]) == "restricted"


def test_fabric_resources_go_into_requests_and_limits(tmp_path: Path) -> None:
    docs = rendered(tmp_path, {"resources": EFA})
    for c in training_containers(docs):
        requests, limits = c["resources"]["requests"], c["resources"]["limits"]
        assert requests["vpc.amazonaws.com/efa"] == limits["vpc.amazonaws.com/efa"] == 32, c["name"]
        assert requests["hugepages-2Mi"] == limits["hugepages-2Mi"] == "5120Mi", c["name"]
        # merged with the chart's own: the spec's requests, limits equal to them, the GPU limit
        assert requests["cpu"] == limits["cpu"] == "96"
        assert requests["memory"] == "1500Gi" and limits["memory"] == "1600Gi"
        assert limits["nvidia.com/gpu"] == 8 and "nvidia.com/gpu" not in requests
    export = export_pod(docs)["spec"]["containers"][0]["resources"]
    assert not {"vpc.amazonaws.com/efa", "hugepages-2Mi"} & (set(export["requests"]) | set(export["limits"]))
    assert pod_security_level(training_pod(docs)["spec"]) == "restricted"


def test_an_infiniband_shared_device_resource(tmp_path: Path) -> None:
    docs = rendered(tmp_path, {"resources": {"rdma/rdma_shared_device_a": 1}})
    for c in training_containers(docs):
        assert c["resources"]["requests"]["rdma/rdma_shared_device_a"] == 1
        assert c["resources"]["limits"]["rdma/rdma_shared_device_a"] == 1


@pytest.mark.parametrize(
    ("volume", "level"),
    [
        ({"name": "hugepages", "emptyDir": {"medium": "HugePages-2Mi"}}, "restricted"),
        ({"name": "infiniband", "hostPath": {"path": "/dev/infiniband"}}, "privileged"),
    ],
)
def test_fabric_volumes_are_mounted_in_the_nccl_containers(volume: dict, level: str, tmp_path: Path) -> None:
    mount = {"name": volume["name"], "mountPath": f"/{volume['name']}"}
    docs = rendered(tmp_path, {"volumes": [volume], "volumeMounts": [mount]})
    spec = training_pod(docs)["spec"]
    assert spec["volumes"][-1] == volume
    # the chart's own, first (kube-api-token: the trainer's token to start the export Job, rbac.yaml)
    assert [v["name"] for v in spec["volumes"][:-1]] == ["config", "tmp", "cache", "dshm", "kube-api-token"]
    for c in training_containers(docs):
        assert c["volumeMounts"][-1] == mount, c["name"]
    assert volume["name"] not in {v["name"] for v in export_pod(docs)["spec"]["volumes"]}
    assert pod_security_level(spec) == level


def test_a_multus_network_goes_on_the_training_pods_only(tmp_path: Path) -> None:
    # podAnnotations reach the export pod too, which would wait for a VF it never requests
    networks = "k8s.v1.cni.cncf.io/networks"
    docs = render("h100-zero3", values_file(tmp_path, {
        "podAnnotations": {"team": "ml", networks: "default-net"},
        "fabric": {"podAnnotations": {networks: "ib-sriov-net"}}, "export": {"enabled": True}}))
    annotations = training_pod(docs)["metadata"]["annotations"]
    assert annotations[networks] == "ib-sriov-net" and annotations["team"] == "ml"
    assert annotations["kubectl.kubernetes.io/default-container"] == "trainer"
    assert export_pod(docs)["metadata"]["annotations"][networks] == "default-net"
    assert pod_security_level(training_pod(docs)["spec"]) == "restricted"


def test_the_opt_ins_reach_a_jobset_too(tmp_path: Path) -> None:
    docs = rendered(tmp_path, {"ipcLock": True, "hostNetwork": True, "runtimeClassName": "nvidia",
                               "resources": EFA}, scenario="jobset")
    (jobset,) = by_kind(docs, "JobSet")
    spec = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert spec["runtimeClassName"] == "nvidia"
    for c in all_containers(spec):
        assert "IPC_LOCK" in c["securityContext"]["capabilities"]["add"]
        assert c["resources"]["limits"]["vpc.amazonaws.com/efa"] == 32


def test_every_opt_in_at_once_is_a_valid_job(tmp_path: Path) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    docs = rendered(tmp_path, {"ipcLock": True, "hostNetwork": True, "runtimeClassName": "nvidia", "resources": EFA,
                               "volumes": [{"name": "hugepages", "emptyDir": {"medium": "HugePages"}}],
                               "volumeMounts": [{"name": "hugepages", "mountPath": "/hugepages"}]})
    for job in by_kind(docs, "Job"):
        kv.validate(job, "1.35.0", strict=True)


@pytest.mark.parametrize(
    ("fabric", "message"),
    [
        ({"ipcLock": "yes"}, "at '/fabric/ipcLock': got string, want boolean"),
        ({"hostNetwork": 1}, "at '/fabric/hostNetwork'"),
        ({"runtimeClassName": "NVIDIA"}, "at '/fabric/runtimeClassName'"),
        ({"resources": {"memory": "1Gi"}}, "invalid propertyName 'memory'"),
        ({"resources": {"cpu": 4}}, "invalid propertyName 'cpu'"),
        ({"resources": {"nvidia.com/gpu": 8}}, "invalid propertyName 'nvidia.com/gpu'"),
        ({"resources": {"vpc.amazonaws.com/efa": "lots"}}, "/fabric/resources/vpc.amazonaws.com~1efa"),
        ({"volumes": [{"name": "tmp", "emptyDir": {}}]}, "at '/fabric/volumes/0/name'"),
        ({"volumes": [{"name": "kube-api-token", "emptyDir": {}}]}, "at '/fabric/volumes/0/name'"),
        ({"volumeMounts": [{"name": "x", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]},
         "at '/fabric/volumeMounts/0/mountPath'"),
        ({"volumes": [{"name": "rdma"}]}, "at '/fabric/volumes/0'"),  # a name and no source
        ({"volumeMounts": [{"name": "rdma", "mountPath": "/dev/shm"}]}, "at '/fabric/volumeMounts/0/mountPath'"),
        ({"volumeMounts": [{"name": "rdma"}]}, "missing property 'mountPath'"),
        ({"privileged": True}, "at '/fabric': additional properties 'privileged' not allowed"),
    ],
)
def test_bad_fabric_values_are_refused(fabric: dict, message: str, tmp_path: Path) -> None:
    assert message in render_error("h100-zero3", values_file(tmp_path, {"fabric": fabric}))


def test_the_general_security_context_still_refuses_ipc_lock(tmp_path: Path) -> None:
    # the opt-in is fabric.ipcLock, not a looser securityContext
    bad = values_file(tmp_path, {"securityContext": {"capabilities": {"drop": ["ALL"], "add": ["IPC_LOCK"]}}})
    assert "at '/securityContext/capabilities/add/0'" in render_error("h100-zero3", bad)


def test_a_mount_of_an_unknown_volume_is_refused(tmp_path: Path) -> None:
    bad = values_file(tmp_path, {"fabric": {"volumeMounts": [{"name": "rdma", "mountPath": "/rdma"}]}})
    assert 'fabric.volumeMounts mounts "rdma", which is not in fabric.volumes' in render_error("h100-zero3", bad)


def test_a_fabric_resource_also_in_resources_is_refused(tmp_path: Path) -> None:
    bad = values_file(tmp_path, {"fabric": {"resources": {"vpc.amazonaws.com/efa": 32}},
                                 "resources": {"limits": {"vpc.amazonaws.com/efa": 4}}})
    assert "resources sets vpc.amazonaws.com/efa, and so does fabric.resources" in render_error("h100-zero3", bad)


@pytest.mark.parametrize(
    ("mutate", "level"),
    [
        (lambda p: None, "restricted"),
        (lambda p: p["volumes"].append({"name": "nfs", "nfs": {"server": "s", "path": "/"}}), "baseline"),
        (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["CHOWN"]), "baseline"),
        (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["IPC_LOCK"]), "privileged"),
        (lambda p: p.update(hostNetwork=True), "privileged"),
        (lambda p: p["volumes"].append({"name": "host", "hostPath": {"path": "/"}}), "privileged"),
    ],
)
def test_the_level_checker(mutate: Any, level: str) -> None:
    (job,) = by_kind(render("cpu"), "Job")
    pod = copy.deepcopy(job["spec"]["template"]["spec"])
    mutate(pod)
    assert pod_security_level(pod) == level
