"""Pod Security Standards "restricted" on every container (init containers included) of every pod
of every scenario, checked rule by rule as the Kubernetes documentation states the profile; and
values.schema.json refusing values that would break it. A scenario that opts into the RDMA fabric
(`fabric.ipcLock`, `fabric.hostNetwork`: docs/chart.md, "Fabric: EFA and InfiniBand") names the
level its namespace needs in its header (`pod-security.kubernetes.io/enforce: <level>`); its training
pod is checked against that level, and breaks "restricted" by exactly its opt-ins, no more."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from tests.chart.scenarios import (
    SCENARIOS,
    all_containers,
    by_kind,
    pod_templates,
    render,
    render_error,
    scenario_file,
    scenario_values,
    values_file,
)

pytestmark = pytest.mark.usefixtures("helm_binary")

# "restricted": only these volume types (https://kubernetes.io/docs/concepts/security/pod-security-standards/)
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}


def _host_namespaces_sysctls(pod_spec: dict[str, Any]) -> list[str]:
    """The pod-level rules "baseline" and "restricted" share: host namespaces, unsafe sysctls, hostProcess."""
    found = [f"pod: {field}" for field in ("hostNetwork", "hostPID", "hostIPC") if pod_spec.get(field)]
    psc = pod_spec.get("securityContext", {})
    found += [f"pod: sysctl {s['name']}" for s in psc.get("sysctls", []) if s["name"] not in SAFE_SYSCTLS]
    if psc.get("windowsOptions", {}).get("hostProcess"):
        found.append("pod: hostProcess")
    return found


def _container_baseline(c: dict[str, Any], psc: dict[str, Any]) -> list[str]:
    """The container rules both levels share: procMount, host ports, SELinux user and role."""
    sc, name = c.get("securityContext", {}), f"container {c['name']}"
    found = [f"{name}: procMount"] if sc.get("procMount", "Default") != "Default" else []
    found += [f"{name}: hostPort {p['hostPort']}" for p in c.get("ports", []) if p.get("hostPort")]
    se = sc.get("seLinuxOptions", psc.get("seLinuxOptions", {}))
    if se.get("user") or se.get("role"):
        found.append(f"{name}: seLinuxOptions user/role")
    return found


def restricted_violations(pod_spec: dict[str, Any]) -> list[str]:
    """What breaks the "restricted" profile (baseline included) in a pod spec; empty when nothing."""
    psc = pod_spec.get("securityContext", {})
    found = _host_namespaces_sysctls(pod_spec)
    for vol in pod_spec.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {vol['name']}: {sorted(kinds)}")
    for c in all_containers(pod_spec):
        sc = c.get("securityContext", {})
        name = f"container {c['name']}"
        if sc.get("privileged"):
            found.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation must be false")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True:
            found.append(f"{name}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            found.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile {seccomp} (RuntimeDefault or Localhost)")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            found.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities add {caps['add']}")
        found += _container_baseline(c, psc)
        apparmor = sc.get("appArmorProfile", psc.get("appArmorProfile", {})).get("type", "RuntimeDefault")
        if apparmor not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: appArmorProfile {apparmor}")
    return found


# "baseline": the capabilities a container may add, and the volume type it forbids
BASELINE_CAPABILITIES = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
                         "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
LEVELS = ("restricted", "baseline", "privileged")
LEVEL_LINE = re.compile(r"pod-security\.kubernetes\.io/enforce: (restricted|baseline|privileged)")


def baseline_violations(pod_spec: dict[str, Any]) -> list[str]:
    """What breaks the "baseline" profile in a pod spec; empty when nothing."""
    psc = pod_spec.get("securityContext", {})
    found = _host_namespaces_sysctls(pod_spec)
    for vol in pod_spec.get("volumes", []):
        if "hostPath" in vol:
            found.append(f"volume {vol['name']}: hostPath")
    for c in all_containers(pod_spec):
        sc = c.get("securityContext", {})
        name = f"container {c['name']}"
        if sc.get("privileged"):
            found.append(f"{name}: privileged")
        if set(sc.get("capabilities", {}).get("add", [])) - BASELINE_CAPABILITIES:
            found.append(f"{name}: capabilities add {sc['capabilities']['add']}")
        if sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type") == "Unconfined":
            found.append(f"{name}: seccompProfile Unconfined")
        found += _container_baseline(c, psc)
        if sc.get("appArmorProfile", psc.get("appArmorProfile", {})).get("type", "RuntimeDefault") == "Unconfined":
            found.append(f"{name}: appArmorProfile Unconfined")
    return found


def pod_security_level(pod_spec: dict[str, Any]) -> str:
    """The strictest Pod Security level that admits the pod."""
    if not restricted_violations(pod_spec):
        return "restricted"
    return "privileged" if baseline_violations(pod_spec) else "baseline"


def documented_level(scenario: str) -> str:
    """The level a scenario's header says its namespace enforces; "restricted" when it says none."""
    m = LEVEL_LINE.search(scenario_file(scenario).read_text(encoding="utf-8"))
    return m.group(1) if m else "restricted"


def fabric_exceptions(pod_spec: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """The "restricted" violations that the scenario's fabric opt-ins cause, and only those."""
    fabric = values.get("fabric", {})
    expected = []
    if fabric.get("hostNetwork"):
        expected.append("pod: hostNetwork")
    for vol in fabric.get("volumes", []):
        kinds = set(vol) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            expected.append(f"volume {vol['name']}: {sorted(kinds)}")
    if fabric.get("ipcLock"):
        for c in all_containers(pod_spec):
            if c["name"] in ("preflight", "trainer"):
                expected.append(f"container {c['name']}: capabilities add {c['securityContext']['capabilities']['add']}")
    return expected


def locked_down_violations(pod_spec: dict[str, Any]) -> list[str]:
    """Beyond the profile, what the chart promises: a read-only root filesystem, writable emptyDirs."""
    found = []
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    for c in all_containers(pod_spec):
        if c.get("securityContext", {}).get("readOnlyRootFilesystem") is not True:
            found.append(f"container {c['name']}: readOnlyRootFilesystem")
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        for path in ("/tmp", "/cache"):
            if path not in mounts or "emptyDir" not in volumes[mounts[path]["name"]]:
                found.append(f"container {c['name']}: {path} is not an emptyDir")
        for m in mounts.values():
            if "configMap" in volumes[m["name"]] and not m.get("readOnly"):
                found.append(f"container {c['name']}: config mount {m['mountPath']} is writable")
    return found


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_container_of_every_pod_is_restricted(scenario: str, tmp_path: Path) -> None:
    """Every pod of every scenario is "restricted", but the training pod of a scenario that opts
    into the fabric: that one meets the level its header names, and breaks "restricted" by its
    opt-ins only. The export pod never gets them."""
    export = values_file(tmp_path, {"export": {"enabled": True}})
    pods = list(pod_templates(render(scenario, export)))
    assert len(pods) == 2  # training (a Job or a JobSet's Job template) and export
    level = documented_level(scenario)
    for where, pod in pods:
        training = pod["metadata"]["labels"]["app.kubernetes.io/component"] == "training"
        if training and level != "restricted":
            assert restricted_violations(pod["spec"]) == fabric_exceptions(pod["spec"], scenario_values(scenario)), where
            assert restricted_violations(pod["spec"]), f"{where}: restricted after all; drop the level from the header"
            assert pod_security_level(pod["spec"]) == level, where
        else:
            assert restricted_violations(pod["spec"]) == [], where
        assert locked_down_violations(pod["spec"]) == [], where
        assert pod["spec"]["automountServiceAccountToken"] is False, where


def test_only_fabric_scenarios_leave_restricted() -> None:
    leaving = {s: documented_level(s) for s in SCENARIOS if documented_level(s) != "restricted"}
    assert leaving == {"h100-efa": "privileged"}  # IPC_LOCK: not in baseline's list either
    for scenario in leaving:
        assert scenario_values(scenario)["fabric"], scenario


def test_a_multi_node_pod_has_its_init_containers_checked_too() -> None:
    pod = next(p for _, p in pod_templates(render("h100-zero3")))
    assert pod["spec"]["initContainers"]  # the rendezvous preflight of a 4-node job
    assert len(all_containers(pod["spec"])) == len(pod["spec"]["initContainers"]) + 1
    assert restricted_violations(pod["spec"]) == []


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p["containers"][0]["securityContext"].update(allowPrivilegeEscalation=True), "allowPrivilegeEscalation"),
        (lambda p: p["securityContext"].pop("runAsNonRoot"), "runAsNonRoot"),
        (lambda p: p["securityContext"].update(seccompProfile={"type": "Unconfined"}), "seccompProfile"),
        (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(drop=["NET_RAW"]), "drop ALL"),
        (lambda p: p["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]), "capabilities add"),
        (lambda p: p["volumes"].append({"name": "host", "hostPath": {"path": "/"}}), "hostPath"),
        (lambda p: p.update(hostNetwork=True), "hostNetwork"),
        (lambda p: p["containers"][0]["ports"][0].update(hostPort=29500), "hostPort"),
    ],
)
def test_the_checker_catches_each_rule(mutate: Any, expected: str) -> None:
    (job,) = by_kind(render("cpu"), "Job")
    pod = copy.deepcopy(job["spec"]["template"]["spec"])
    mutate(pod)
    assert any(expected in v for v in restricted_violations(pod))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"podSecurityContext": {"runAsNonRoot": False}}, "at '/podSecurityContext/runAsNonRoot': value must be true"),
        ({"podSecurityContext": {"runAsUser": 0}}, "at '/podSecurityContext/runAsUser': minimum: got 0, want 1"),
        ({"podSecurityContext": {"seccompProfile": {"type": "Unconfined"}}}, "/podSecurityContext/seccompProfile/type"),
        ({"podSecurityContext": {"seccompProfile": None}}, "missing property 'seccompProfile'"),
        ({"podSecurityContext": {"hostNetwork": True}}, "additional properties 'hostNetwork' not allowed"),
        ({"securityContext": {"allowPrivilegeEscalation": True}}, "/securityContext/allowPrivilegeEscalation"),
        ({"securityContext": {"privileged": True}}, "/securityContext/privileged"),
        ({"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}, "/securityContext/capabilities/drop"),
        ({"securityContext": {"capabilities": {"drop": ["ALL"], "add": ["SYS_ADMIN"]}}},
         "/securityContext/capabilities/add/0"),
    ],
)
def test_values_that_break_the_profile_are_refused(values: dict, message: str, tmp_path: Path) -> None:
    assert message in render_error("cpu", values_file(tmp_path, values))


def test_the_platform_may_tune_what_the_profile_allows(tmp_path: Path) -> None:
    extra = values_file(tmp_path, {
        "podSecurityContext": {"runAsUser": 2000, "runAsGroup": 2000, "fsGroup": 2000,
                               "seccompProfile": {"type": "Localhost", "localhostProfile": "profiles/train.json"}},
        "securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}},
    })
    for where, pod in pod_templates(render("h100-zero3", extra)):
        assert pod["spec"]["securityContext"]["runAsUser"] == 2000, where
        assert restricted_violations(pod["spec"]) == [], where
