"""One GPU catalog: the spec's `resources.gpu` kinds, `launch plan`'s boards (launcher/plan/fit.py
KINDS), the chart's `gpu.type` enum and its placement presets (nvidia-gfd, gke, eks) agree; each
preset places each kind on the right nodes; the chart's CPU default and the spec's GPU default are
one truth (launch always sets `gpu.*` from the spec)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from launcher import client, helm
from launcher.plan import fit
from launcher.values import chart_values
from trainer.spec.io import SpecError, spec_from_dict
from trainer.spec.job import JobSpec
from trainer.spec.resources import ResourcesSpec

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"
SPEC_KINDS = get_args(ResourcesSpec.model_fields["gpu"].annotation)
GPU_KINDS = [k for k in SPEC_KINDS if k not in ("any", "none")]

# what each preset must select, per kind (the label values as the nodes publish them)
PRESETS: dict[str, tuple[str, dict[str, list[str]]]] = {
    "nvidia-gfd": ("nvidia.com/gpu.product", {
        "h100": ["NVIDIA-H100-80GB-HBM3", "NVIDIA-H100-SXM5-80GB", "NVIDIA-H100-PCIe", "NVIDIA-H100-NVL"],
        "h200": ["NVIDIA-H200", "NVIDIA-H200-NVL"],
        "b200": ["NVIDIA-B200"],
        "a100": ["NVIDIA-A100-SXM4-80GB", "NVIDIA-A100-SXM4-40GB", "NVIDIA-A100-80GB-PCIe", "NVIDIA-A100-PCIE-40GB"],
        "l40s": ["NVIDIA-L40S"],
        "a10g": ["NVIDIA-A10G"],
    }),
    "gke": ("cloud.google.com/gke-accelerator", {
        "h100": ["nvidia-h100-80gb", "nvidia-h100-mega-80gb"],
        "h200": ["nvidia-h200-141gb"],
        "b200": ["nvidia-b200"],
        "a100": ["nvidia-tesla-a100", "nvidia-a100-80gb"],
        "l40s": [],  # GKE offers no L40S
        "a10g": [],  # nor the A10G (an AWS-only board)
    }),
    "eks": ("node.kubernetes.io/instance-type", {
        "h100": ["p5.48xlarge"],
        "h200": ["p5e.48xlarge", "p5en.48xlarge"],
        "b200": ["p6-b200.48xlarge"],
        "a100": ["p4d.24xlarge", "p4de.24xlarge"],
        "l40s": [f"g6e.{s}" for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge",
                                       "48xlarge")],
        "a10g": [f"g5.{s}" for s in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "12xlarge", "16xlarge", "24xlarge",
                                      "48xlarge")],
    }),
}


def spec(gpu: str, **resources: Any) -> JobSpec:
    return spec_from_dict({
        "name": "catalog", "base_model": "Qwen/Qwen2.5-0.5B", "data": {"train": "s3://d/train.jsonl"},
        "output": {"uri": "s3://r/catalog/"}, "resources": {"gpu": gpu, "gpus_per_node": 2, **resources},
    })


def template(folder: Path, gpu: str, platform: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """`helm template` with the values launch derives for a `gpu` spec, and a platform values file."""
    launch_values = folder / "launch.yaml"
    launch_values.write_text(yaml.safe_dump(chart_values(spec(gpu), "catalog-ab12c")))
    extra = folder / "platform.yaml"
    extra.write_text(yaml.safe_dump(platform))
    return subprocess.run([helm.find_helm(), "template", "t", str(CHART), "-f", str(launch_values), "-f", str(extra)],
                          capture_output=True, text=True, timeout=120)


def required_terms(rendered: str) -> list[dict[str, Any]]:
    (job,) = [d for d in helm.parse_manifests(rendered) if d["kind"] == "Job"]
    node = job["spec"]["template"]["spec"].get("affinity", {}).get("nodeAffinity", {})
    return node.get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])


def test_the_spec_the_planner_and_the_chart_know_the_same_gpu_kinds() -> None:
    assert set(GPU_KINDS) >= {"h100", "h200", "b200", "a100", "l40s", "a10g"}
    assert set(fit.KINDS) == {*GPU_KINDS, "any"}  # every spec kind has boards in the plan, and nothing more
    assert set(fit.KINDS["any"]) == set(fit.GPUS) and all(set(b) <= set(fit.GPUS) for b in fit.KINDS.values())
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["gpu"]["properties"]
    assert schema["type"]["enum"] == list(SPEC_KINDS)
    assert list(schema["products"]["properties"]) == GPU_KINDS
    assert schema["placement"]["enum"] == list(PRESETS)
    assert all(set(kinds) == set(GPU_KINDS) for _, kinds in PRESETS.values())


def test_the_catalog_figures() -> None:
    gib = 2**30
    capacity = {g.key: round(g.capacity / gib, 1) for g in fit.GPUS}
    assert capacity == {"b200-180gb": 179.1, "h200-141gb": 140.4, "h100-80gb": 79.6, "a100-80gb": 80.0,
                        "l40s-48gb": 45.0, "a100-40gb": 40.0, "a10g-24gb": 22.5}
    assert fit.GPUS == (fit.B200, fit.H200, fit.H100_80, fit.A100_80, fit.L40S, fit.A100_40, fit.A10G)  # the columns
    tflops = {g.key: g.bf16_flops / 1e12 for g in fit.GPUS}  # dense bf16, no sparsity
    assert tflops == {"b200-180gb": 2250, "h200-141gb": 989, "h100-80gb": 989, "a100-80gb": 312, "l40s-48gb": 362,
                      "a100-40gb": 312, "a10g-24gb": 70}
    assert fit.deciding_gpu("h200") is fit.H200 and fit.deciding_gpu("b200") is fit.B200
    assert fit.deciding_gpu("l40s") is fit.L40S and fit.deciding_gpu("a10g") is fit.A10G
    assert fit.deciding_gpu("any") is fit.A10G  # `any` may land on the smallest GPU there is


@pytest.mark.parametrize("gpu", SPEC_KINDS)
def test_the_spec_accepts_every_kind(gpu: str) -> None:
    s = spec(gpu)
    assert s.resources.gpu == gpu and s.resources.world_size == (1 if gpu == "none" else 2)
    assert chart_values(s, "catalog-ab12c")["gpu"] == {"type": gpu, "perNode": 0 if gpu == "none" else 2}


def test_the_spec_refuses_an_unknown_kind() -> None:
    with pytest.raises(SpecError, match="h200"):  # the message lists the kinds
        spec("v100")


@pytest.mark.usefixtures("helm_binary")
@pytest.mark.parametrize("placement", PRESETS)
@pytest.mark.parametrize("gpu", [*GPU_KINDS, "any"])
def test_each_preset_places_each_kind(placement: str, gpu: str, tmp_path: Path) -> None:
    label, products = PRESETS[placement]
    platform = {} if placement == "nvidia-gfd" else {"gpu": {"placement": placement}}  # nvidia-gfd is the default
    done = template(tmp_path, gpu, platform)
    if gpu == "any":  # any node with nvidia.com/gpu: no product term
        assert done.returncode == 0, done.stderr
        assert required_terms(done.stdout) == []
        return
    if not products[gpu]:
        assert done.returncode != 0
        assert f"gpu.products.{gpu} is empty: list the {label} values of your {gpu.upper()} nodes" in done.stderr
        assert f"the {placement} placement preset has none" in done.stderr
        return
    assert done.returncode == 0, done.stderr
    assert required_terms(done.stdout) == [{"matchExpressions": [{"key": label, "operator": "In",
                                                                  "values": products[gpu]}]}]


@pytest.mark.usefixtures("helm_binary")
def test_platform_values_override_a_preset_per_type(tmp_path: Path) -> None:
    mine = ["nvidia-l40s-custom"]
    done = template(tmp_path, "l40s", {"gpu": {"placement": "gke", "products": {"l40s": mine}}})
    assert done.returncode == 0, done.stderr
    assert required_terms(done.stdout) == [{"matchExpressions": [
        {"key": "cloud.google.com/gke-accelerator", "operator": "In", "values": mine}]}]
    # another type keeps the preset; a label of your own (e.g. Karpenter's) applies to every type
    done = template(tmp_path, "h200", {"gpu": {"placement": "eks", "products": {"l40s": mine}}})
    assert required_terms(done.stdout)[0]["matchExpressions"][0]["values"] == ["p5e.48xlarge", "p5en.48xlarge"]
    karpenter = {"placement": "eks", "productLabel": "karpenter.k8s.aws/instance-gpu-name",
                 "products": {"a10g": ["a10g"]}}
    done = template(tmp_path, "a10g", {"gpu": karpenter})
    assert required_terms(done.stdout) == [{"matchExpressions": [
        {"key": "karpenter.k8s.aws/instance-gpu-name", "operator": "In", "values": ["a10g"]}]}]


def test_chart_gpu_defaults_are_a_cpu_job_and_launch_always_sets_them() -> None:
    """Item 9: the chart's `gpu` defaults (`none`, 0) are what launch derives for `resources.gpu: none`,
    consistent with the chart's other CPU defaults (`job.processesPerNode: 1`); launch always writes
    `gpu.type` and `gpu.perNode`, so a spec that says nothing gets the spec's defaults (h100 x 8)."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    cpu = chart_values(spec("none"), "catalog-ab12c")
    assert {k: defaults["gpu"][k] for k in ("type", "perNode")} == cpu["gpu"]
    assert defaults["job"]["processesPerNode"] == cpu["job"]["processesPerNode"] == 1
    assert defaults["gpu"]["placement"] == "nvidia-gfd"
    plain = spec_from_dict({"name": "catalog", "base_model": "Qwen/Qwen2.5-0.5B", "data": {"train": "s3://d/t.jsonl"},
                            "output": {"uri": "s3://r/catalog/"}})
    res = ResourcesSpec()
    assert chart_values(plain, "catalog-ab12c")["gpu"] == {"type": res.gpu, "perNode": res.gpus_per_node}
    assert (res.gpu, res.gpus_per_node) == ("h100", 8)


def plan(folder: Path, gpu: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = folder / f"{gpu}.yaml"
    path.write_text(yaml.safe_dump({
        "name": f"plan-{gpu}", "base_model": "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        "data": {"train": "s3://d/train.jsonl"}, "output": {"uri": "s3://r/plan/"},
        "model": {"quantization": "4bit"}, "adapter": {"r": 32, "alpha": 64},
        "resources": {"gpu": gpu, "gpus_per_node": 1},
    }))
    env = {k: v for k, v in os.environ.items() if k != "KUBETUNE_DEBUG"}
    return subprocess.run([sys.executable, "-m", "launcher.cli", "plan", *args, str(path)], capture_output=True,
                          text=True, env=env, timeout=120)


@pytest.mark.parametrize(("gpu", "label", "gib"),
                         [("h200", "H200 141GB", "140.4 GiB"), ("l40s", "L40S 48GB", "45.0 GiB")])
def test_plan_decides_on_the_new_gpus(gpu: str, label: str, gib: str, tmp_path: Path) -> None:
    """A QLoRA 7B job (about 97 GiB per GPU at the default batch): fits an H200, not an L40S."""
    done = plan(tmp_path, gpu)
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if "per GPU" in line and "GPUs" in line)
    assert all(g.label in header for g in fit.GPUS)
    verdict = next(line for line in done.stdout.splitlines() if line.startswith(("fits: ", "does not fit: ")))
    assert label in verdict and gib in verdict and f"(resources.gpu {gpu}:" in verdict
    assert verdict.startswith("fits: ") == (gpu == "h200")
    data = json.loads(plan(tmp_path, gpu, "-o", "json").stdout)
    assert data["deciding_gpu"] == {"type": fit.deciding_gpu(gpu).key, "capacity_bytes": fit.deciding_gpu(gpu).capacity}
    assert set(data["fit"][0]["headroom_bytes"]) == {g.key for g in fit.GPUS}


@pytest.mark.usefixtures("helm_binary")
def test_submit_dry_run_renders_an_h200_job(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"name": "h200-job", "base_model": "Qwen/Qwen2.5-0.5B",
                                    "data": {"train": "s3://d/train.jsonl"}, "output": {"uri": "s3://r/h200/"},
                                    "resources": {"gpu": "h200", "gpus_per_node": 8}}))
    sub = client.prepare(path, dry_run=True)
    assert sub.values["gpu"] == {"type": "h200", "perNode": 8}
    assert required_terms(client.render(sub)) == [{"matchExpressions": [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H200", "NVIDIA-H200-NVL"]}]}]
