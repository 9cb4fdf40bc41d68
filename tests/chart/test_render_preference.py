"""`launch render` of a 2-node DPO job: the same objects as the same SFT job, but for the spec the ConfigMap carries
(training.objective) and the deadline its extra compute sets; every object valid against the Kubernetes OpenAPI
schemas (strict), as tests/chart/test_scenarios.py checks the chart's scenarios."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from launcher import helm
from launcher.cli import main
from launcher.plan import catalog, deadline
from launcher.plan.arch import from_hf_config
from trainer.spec.io import spec_from_dict

pytestmark = pytest.mark.usefixtures("helm_binary")
MODEL = "Qwen/Qwen2.5-0.5B"  # catalogued: planned and sized without a download


def raw(objective: str) -> dict[str, Any]:
    return {
        "name": "pref-render", "base_model": MODEL,
        "data": {"train": "s3://datasets/pref/train.jsonl", "max_seq_len": 2048,
                 **({"format": "preference"} if objective == "dpo" else {})},
        "training": {"objective": objective, "strategy": "zero2", "max_steps": 20000, "per_device_batch_size": 4},
        "resources": {"gpu": "h100", "nodes": 2, "gpus_per_node": 4, "memory": "64Gi"},
        "output": {"uri": "s3://runs/pref-render/"},
    }


def render(tmp_path: Path, objective: str) -> tuple[list[dict[str, Any]], str]:
    """The rendered objects, the submission's random name replaced by `NAME`, and what `launch render` said."""
    path = tmp_path / f"{objective}.yaml"
    path.write_text(yaml.safe_dump(raw(objective)))
    done = CliRunner().invoke(main, ["render", str(path)])
    assert done.exit_code == 0, done.output
    docs = helm.parse_manifests(done.stdout)
    (cm,) = [d for d in docs if d["kind"] == "ConfigMap"]
    name = cm["metadata"]["name"]
    assert name.startswith("pref-render-")
    return json.loads(json.dumps(docs).replace(name, "NAME")), done.stderr


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def test_dpo_renders_the_sft_objects_with_its_spec(tmp_path: Path) -> None:
    sft, sft_said = render(tmp_path, "sft")
    dpo, dpo_said = render(tmp_path, "dpo")
    assert [(d["kind"], d["metadata"]["name"]) for d in dpo] == [(d["kind"], d["metadata"]["name"]) for d in sft]
    # the ConfigMap carries the spec, objective included; the accelerate config is the same
    sft_cm, dpo_cm = by_kind(sft, "ConfigMap"), by_kind(dpo, "ConfigMap")
    sft_spec, dpo_spec = (yaml.safe_load(cm["data"]["spec.yaml"]) for cm in (sft_cm, dpo_cm))
    assert (dpo_spec["training"].pop("objective"), sft_spec["training"].pop("objective")) == ("dpo", "sft")
    assert (dpo_spec["data"].pop("format"), sft_spec["data"].pop("format")) == ("preference", "messages")
    assert dpo_spec == sft_spec
    assert dpo_cm["data"]["accelerate.yaml"] == sft_cm["data"]["accelerate.yaml"]
    # the Job: DPO's chosen + rejected rows and reference forward make each step 2.67 x SFT's FLOPs, so its
    # activeDeadlineSeconds (resources.deadline auto) is longer; nothing else differs
    sft_job, dpo_job = by_kind(sft, "Job"), by_kind(dpo, "Job")
    params = from_hf_config(catalog.lookup(MODEL), MODEL).total_params
    sft_deadline, dpo_deadline = sft_job["spec"].pop("activeDeadlineSeconds"), dpo_job["spec"].pop("activeDeadlineSeconds")
    assert sft_deadline == deadline.resolve(spec_from_dict(raw("sft")), params).seconds
    assert dpo_deadline == deadline.resolve(spec_from_dict(raw("dpo")), params).seconds > sft_deadline
    assert "for 20000 steps of dpo (2.67 x an SFT step's FLOPs)" in dpo_said and " of sft" not in sft_said
    for sft_doc, dpo_doc in zip(sft, dpo, strict=True):
        if sft_doc["kind"] != "ConfigMap":
            assert dpo_doc == sft_doc, dpo_doc["kind"]
    assert {k: v for k, v in dpo_cm.items() if k != "data"} == {k: v for k, v in sft_cm.items() if k != "data"}


def test_dpo_objects_match_the_kubernetes_openapi_schemas(tmp_path: Path) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is missing: run `make setup` (it is a dev dependency)")
    docs, _ = render(tmp_path, "dpo")
    assert {d["kind"] for d in docs} >= {"ConfigMap", "Job", "Service"}
    for doc in docs:
        # strict: an unknown or misspelt field is an error, as the API server's strict validation
        kubernetes_validate.validate(doc, "1.35.0", strict=True)
