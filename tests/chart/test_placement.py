"""GPU placement: the `nvidia.com/gpu` limit, H100 / A100 node affinity on the GPU feature discovery's
product label, the GPU toleration, the platform's own selectors merged in, /dev/shm and NCCL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.chart.scenarios import (
    CHART,
    component,
    env_of,
    pod_templates,
    render,
    render_error,
    scenario_values,
    training_pod,
    values_file,
)

pytestmark = pytest.mark.usefixtures("helm_binary")

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
PRODUCT = "nvidia.com/gpu.product"
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())
_PRESETS = (CHART / "templates" / "_gpu.tpl").read_text().split('define "kubetune.gpuPresets" -}}', 1)[1]
PRODUCTS = yaml.safe_load(_PRESETS.split("{{- end }}", 1)[0])["nvidia-gfd"]["products"]  # the default preset


def required_terms(pod: dict[str, Any]) -> list[dict[str, Any]]:
    affinity = pod["spec"].get("affinity", {}).get("nodeAffinity", {})
    return affinity.get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])


def product_terms(pod: dict[str, Any]) -> list[list[str]]:
    """Per required node selector term, the GPU products it allows."""
    return [
        expr["values"]
        for term in required_terms(pod)
        for expr in term.get("matchExpressions", [])
        if expr["key"] == PRODUCT and expr["operator"] == "In"
    ]


def trainer(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod["spec"]["containers"] if c["name"] == "trainer"]
    return container


def test_the_products_cover_sxm_pcie_nvl_hbm3_and_both_a100_sizes() -> None:
    products = PRODUCTS
    assert DEFAULTS["gpu"]["placement"] == "nvidia-gfd" and DEFAULTS["gpu"]["products"] == {}
    assert {"NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-PCIe", "NVIDIA-H100-NVL"} <= set(products["h100"])
    assert {"NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-PCIE-40GB",
            "NVIDIA-A100-80GB-PCIe"} <= set(products["a100"])
    assert all(p.startswith("NVIDIA-H100") for p in products["h100"])
    assert all(p.startswith("NVIDIA-A100") for p in products["a100"])


def test_h100_multi_node() -> None:
    docs = render("h100-zero3")
    pod = training_pod(docs)
    container = trainer(pod)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert container["resources"]["limits"]["memory"] == "1600Gi"  # the platform's limit is kept
    assert container["resources"]["requests"] == {"cpu": "96", "memory": "1500Gi", "ephemeral-storage": "200Gi"}  # spec
    assert product_terms(pod) == [PRODUCTS["h100"]]
    assert pod["spec"]["tolerations"] == [GPU_TOLERATION]
    args = container["args"]
    assert args[args.index("--num_machines") + 1] == "4"
    assert args[args.index("--num_processes") + 1] == "32"
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"] == {"medium": "Memory", "sizeLimit": "256Gi"}  # resources.shm_size
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert container["image"] == "registry.example.com/ml/kubetune-trainer:0.1.0-cuda13.0"
    assert container["imagePullPolicy"] == "Always"


def test_nccl_settings_reach_gpu_training_pods_only(tmp_path: Path) -> None:
    env = env_of(trainer(training_pod(render("h100-zero3"))))
    assert env["NCCL_SOCKET_IFNAME"] == "eth0" and env["NCCL_IB_HCA"] == "mlx5"
    assert env["NCCL_IB_GID_INDEX"] == "3"
    assert not [name for name in env if name.startswith("NCCL_DEBUG")]  # no debug variables by default
    # the same platform values on a CPU job, and on the export Job of a GPU job: no NCCL there
    nccl = values_file(tmp_path, {"nccl": {"NCCL_SOCKET_IFNAME": "eth0"}, "export": {"enabled": True}})
    for scenario in ("cpu", "kueue"):
        for where, pod in pod_templates(render(scenario, nccl)):
            gpu = any("nvidia.com/gpu" in c.get("resources", {}).get("limits", {}) for c in pod["spec"]["containers"])
            for c in pod["spec"]["containers"]:
                assert ("NCCL_SOCKET_IFNAME" in env_of(c)) == gpu, where


def test_env_wins_over_nccl(tmp_path: Path) -> None:
    extra = values_file(tmp_path, {"env": {"NCCL_IB_HCA": "mlx5_0,mlx5_1"}})
    assert env_of(trainer(training_pod(render("h100-zero3", extra))))["NCCL_IB_HCA"] == "mlx5_0,mlx5_1"


def test_a100_terms_are_added_to_each_platform_term() -> None:
    """Node selector terms are alternatives: the product requirement must hold in every one of them."""
    pod = training_pod(render("a100-fsdp"))
    terms = required_terms(pod)
    ci = scenario_values("a100-fsdp")
    platform_terms = ci["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert len(terms) == len(platform_terms) == 2
    for term, theirs in zip(terms, platform_terms, strict=True):
        exprs = term["matchExpressions"]
        assert exprs[:-1] == theirs["matchExpressions"]  # the platform's own requirement, untouched
        assert exprs[-1] == {"key": PRODUCT, "operator": "In", "values": ci["gpu"]["products"]["a100"]}
    preferred = pod["spec"]["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred == ci["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert pod["spec"]["nodeSelector"] == ci["nodeSelector"]
    # the GPU toleration first, then the platform's; the one the platform repeats is not doubled
    assert pod["spec"]["tolerations"] == [GPU_TOLERATION, ci["tolerations"][0]]
    assert trainer(pod)["resources"]["limits"]["nvidia.com/gpu"] == 4


def test_platform_pod_affinity_is_kept_beside_ours(tmp_path: Path) -> None:
    anti = {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname",
         "labelSelector": {"matchLabels": {"app.kubernetes.io/component": "training"}}}]}
    extra = values_file(tmp_path, {"affinity": {"podAntiAffinity": anti}})
    pod = training_pod(render("h100-zero3", extra))
    assert pod["spec"]["affinity"]["podAntiAffinity"] == anti
    assert product_terms(pod) == [PRODUCTS["h100"]]


def test_any_gpu_asks_for_gpus_without_a_product() -> None:
    pod = training_pod(render("any-ddp"))
    assert trainer(pod)["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod["spec"]["tolerations"] == [GPU_TOLERATION]
    assert "affinity" not in pod["spec"]


def test_a_cpu_job_has_no_gpu_placement() -> None:
    for where, pod in pod_templates(render("cpu")):
        spec = pod["spec"]
        assert not {"affinity", "tolerations", "nodeSelector"} & set(spec), where
        for c in spec["containers"]:
            assert "nvidia.com/gpu" not in str(c.get("resources", {})), where


def test_the_export_pod_gets_the_platform_placement_but_no_gpu(tmp_path: Path) -> None:
    extra = values_file(tmp_path, {"nodeSelector": {"pool": "cpu"}, "tolerations": [
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]})
    (export,) = [p for _, p in pod_templates(render("kueue", extra)) if component(p) == "export"]
    assert export["spec"]["nodeSelector"] == {"pool": "cpu"}
    assert export["spec"]["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ml",
                                             "effect": "NoSchedule"}]
    assert "affinity" not in export["spec"]
    assert "nvidia.com/gpu" not in str(export["spec"]["containers"][0].get("resources", {}))


def test_platform_products_extend_the_match(tmp_path: Path) -> None:
    products = [*PRODUCTS["h100"], "NVIDIA-H100-80GB-HBM3-SHARED"]
    extra = values_file(tmp_path, {"gpu": {"products": {"h100": products}, "productLabel": "example.com/gpu"}})
    pod = training_pod(render("h100-zero3", extra))
    (term,) = required_terms(pod)
    assert term["matchExpressions"] == [{"key": "example.com/gpu", "operator": "In", "values": products}]


def test_a_gpu_limit_in_resources_is_refused(tmp_path: Path) -> None:
    extra = values_file(tmp_path, {"resources": {"limits": {"nvidia.com/gpu": 2}}})
    assert "resources.limits.nvidia.com/gpu is set" in render_error("h100-zero3", extra)


def test_an_empty_product_list_is_refused(tmp_path: Path) -> None:
    extra = values_file(tmp_path, {"gpu": {"products": {"a100": []}}})
    assert "/gpu/products/a100" in render_error("a100-fsdp", extra)
