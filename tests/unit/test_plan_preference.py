"""`launch plan` for the preference objectives (launcher/plan/objective.py, activations.py): the rows a DPO / ORPO / KTO
micro-batch puts through the policy, TRL's fused LM head, the reference forward and the compute they add; SFT's plan
unchanged (docs/plan.md's example, byte for byte)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from click.testing import CliRunner

from launcher.cli import main
from launcher.plan import catalog, deadline, report
from launcher.plan.arch import from_hf_config
from launcher.plan.objective import spec_passes
from trainer.spec.io import spec_from_dict
from trainer.spec.job import JobSpec

ROOT = Path(__file__).resolve().parents[2]
MODEL = "Qwen/Qwen2.5-0.5B"  # catalogued: hidden 896, 14 query heads and 2 kv heads of 64, MLP 4864, vocab 151936
ARCH = from_hf_config(catalog.lookup(MODEL), MODEL)


def raw(objective: str = "sft", batch: int = 2, seq: int = 4096, **extra: Any) -> dict[str, Any]:
    return {
        "name": "pref", "base_model": MODEL,
        "data": {"train": "s3://d/train.jsonl", "max_seq_len": seq,
                 **({} if objective == "sft" else {"format": "unpaired" if objective == "kto" else "preference"})},
        "training": {"objective": objective, "per_device_batch_size": batch, "max_steps": 2000, "strategy": "zero2",
                     **extra.pop("training", {})},
        "resources": {"gpu": "h100", "nodes": 2, "gpus_per_node": 4},
        "output": {"uri": "s3://runs/pref/"},
        **extra,
    }


def plan(objective: str = "sft", **kw: Any) -> report.Plan:
    return report.make(spec_from_dict(raw(objective, **kw)), ARCH)


def test_dpo_puts_chosen_and_rejected_rows_through_the_policy() -> None:
    # with the adapter's dropout kept, a DPO micro-batch of 2 pairs saves what an SFT micro-batch of 4 rows saves
    dpo = plan("dpo", preference={"dropout": "adapter"})
    assert dpo.setup.rows == 4
    assert dpo.estimate.parts["activations"] == plan("sft", batch=4).estimate.parts["activations"]
    assert dpo.estimate.parts["activations"] > plan("sft").estimate.parts["activations"]
    # TRL's default switches dropout off: no dropout masks nor dropped copies of the adapters' inputs
    assert plan("dpo").setup.dropout == 0 and plan("dpo").estimate.parts["activations"] < dpo.estimate.parts["activations"]


def test_dpo_head_and_reference_forward_by_hand() -> None:
    """2 pairs of 4096 tokens in bf16 on sdpa: 4 rows, 16384 tokens."""
    parts = plan("dpo").estimate.parts
    tokens, h, a = 4 * 4096, 896, 2
    tile = 4096 * 32768 * a  # TRL's tile buffer: 4096 positions x 32768 columns, whatever the vocabulary
    # the head: the positions' saved hidden states, their fp32 gradient and its bf16 cast, one tile
    head = tokens * h * (a + 4 + a) + tile
    assert parts["logits + loss"] == head == 385_875_968
    # no_grad reference forward of the 4 rows: the residual stream, one 4 x 4096 x 4096 boolean mask, and the largest
    # transient: one layer's normed input + the MLP's gate, up and activation outputs (3 x 4864 x 2 bytes a token)
    layer = tokens * (h * a + 3 * 4864 * a)
    transient = tokens * h * a + 4 * 4096**2 + layer
    # it runs before the backward: it adds what exceeds the head's backward working set (the head less its saved states)
    assert parts["reference forward"] == transient - (head - tokens * h * a) == 247_463_936
    assert "reference forward" not in plan("sft").estimate.parts


def test_precompute_reference_changes_compute_not_the_saved_activations() -> None:
    per_step, pre = plan("dpo"), plan("dpo", preference={"precompute_reference": True})
    # the policy's rows, their activations and the head are the same; only the per-step reference forward goes
    for part in ("activations", "logits + loss"):
        assert pre.estimate.parts[part] == per_step.estimate.parts[part]
    assert "reference forward" not in pre.estimate.parts
    assert per_step.estimate.total - pre.estimate.total >= per_step.estimate.parts["reference forward"]
    # compute: 2 rows trained (6 FLOPs per weight and token) + 2 forwarded (2) per batch row, against SFT's 6
    assert spec_passes(per_step.spec).flops_factor(recompute=False) == (2 * 6 + 2 * 2) / 6
    assert spec_passes(pre.spec).flops_factor(recompute=False) == 2.0
    lines = "\n".join(report.describe(pre))
    assert "dpo: 2 x 2 rows per micro-batch (chosen + rejected), reference log-probs precomputed once" in lines


def test_deadline_counts_the_objectives_compute() -> None:
    params = ARCH.total_params
    sft = deadline.estimate_seconds(spec_from_dict(raw()), params)
    dpo = deadline.estimate_seconds(spec_from_dict(raw("dpo")), params)
    orpo = deadline.estimate_seconds(spec_from_dict(raw("orpo")), params)
    pre = deadline.estimate_seconds(spec_from_dict(raw("dpo", preference={"precompute_reference": True})), params)
    kto = deadline.estimate_seconds(spec_from_dict(raw("kto")), params)
    assert dpo / sft == (2 * 6 + 2 * 2) / 6 and orpo / sft == 2.0
    assert pre == dpo  # the reference pass before training, counted over the rows the steps read
    assert kto / sft == (6 + 3 * 2) / 6  # the KL forward, the reference forwards of the rows and the KL rows
    line = deadline.resolve(spec_from_dict(raw("dpo")), params).line
    assert "for 2000 steps of dpo (2.67 x an SFT step's FLOPs) at" in line


def test_orpo_counts_the_full_logits() -> None:
    orpo = plan("orpo", batch=1, seq=2048)
    assert orpo.setup.rows == 2 and not orpo.setup.reference
    # 2 rows x 2048 positions x vocab: the bf16 logits, their fp32 copy, the saved log-softmax and its gradient
    assert orpo.estimate.parts["logits + loss"] == 2 * 2048 * 151936 * (2 + 4 + 4 + 4)
    assert "reference forward" not in orpo.estimate.parts
    assert "orpo: 2 x 1 rows per micro-batch (chosen + rejected), no reference; full logits" in "\n".join(
        report.describe(orpo))


def test_kto_rows_reference_and_its_smallest_batch() -> None:
    kto = plan("kto", batch=4)
    assert kto.setup.rows == 4 and kto.setup.reference and "reference forward" in kto.estimate.parts
    assert "kto: 4 rows per micro-batch + 4 mismatched KL rows (forward, no grad), a reference forward of both" in \
        "\n".join(report.describe(kto))
    # TRL's KTO needs two rows per micro-batch: the lever halves to 2, never 1
    big = report.make(spec_from_dict(raw("kto", batch=8, seq=32768)), ARCH)
    levers = report.other_levers(big)
    assert any("per_device_batch_size=2 --set training.grad_accum=4" in lever for lever in levers), levers
    assert not any("per_device_batch_size=1" in lever for lever in levers)
    # a preference job runs under ZeRO-3 as an SFT job does (tests/e2e/test_preference_ranks.py): the ladder offers it
    zero3 = [rung for rung in big.ladder if rung.label == "ZeRO-3"]
    assert zero3 and zero3[0].helps and "training.strategy=zero3" in zero3[0].overrides, big.ladder


def test_dpo_holds_a_reference_adapter() -> None:
    for dpo in (plan("dpo"), plan("dpo", adapter={"init_from": "s3://runs/sft/adapter/"})):  # TRL copies any start
        assert dpo.estimate.parts["reference adapter"] == dpo.estimate.parts["adapter"]
    assert "reference adapter" not in plan("orpo", adapter={"init_from": "s3://runs/sft/adapter/"}).estimate.parts


def write(tmp_path: Path, spec: dict[str, Any]) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def test_launch_plan_prints_the_objective(tmp_path: Path) -> None:
    path = write(tmp_path, raw("dpo", batch=4, seq=2048))
    done = CliRunner().invoke(main, ["plan", str(path)])
    assert done.exit_code == 0, done.output
    assert "  dpo: 2 x 4 rows per micro-batch (chosen + rejected), a reference forward of them each step; compute " \
        "2.67 x an SFT step of 4 rows\n" in done.output
    assert "  reference forward " in done.output
    as_json = CliRunner().invoke(main, ["plan", str(path), "-o", "json"])
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.output)
    assert doc["objective"]["name"] == "dpo" and doc["objective"]["rows_per_micro_batch"] == 8
    assert doc["breakdown_bytes"]["reference forward"] == report.make(JobSpec.model_validate(
        raw("dpo", batch=4, seq=2048)), ARCH).estimate.parts["reference forward"]


def test_sft_plan_is_unchanged(tmp_path: Path) -> None:
    # docs/plan.md's example, byte for byte, and no objective in SFT's JSON
    args = ["plan", str(ROOT / "examples" / "seed002-pushback.yaml"), "--set", "training.per_device_batch_size=2",
            "--set", "training.gradient_checkpointing=false"]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 0, done.output
    documented = (ROOT / "docs" / "plan.md").read_text().split("```text\n", 1)[1].split("```", 1)[0]
    assert done.output == documented
    as_json = json.loads(CliRunner().invoke(main, [*args, "-o", "json"]).output)
    assert "objective" not in as_json and "reference forward" not in as_json["breakdown_bytes"]
