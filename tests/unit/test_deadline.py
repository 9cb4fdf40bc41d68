"""`resources.deadline` -> the training Job's `activeDeadlineSeconds`, through `launch render` (the CLI's code path):
`auto` from the run's estimate (launcher/plan/deadline.py), a stated duration, `none`; never for a local run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from launcher import helm
from launcher.cli import main
from launcher.plan import catalog
from launcher.plan.arch import from_hf_config
from launcher.plan.fit import A10G, H100_80
from trainer.spec.resources import DEADLINE_FACTOR, DEADLINE_MFU, DEADLINE_STARTUP_HOURS, ResourcesSpec

pytestmark = pytest.mark.usefixtures("helm_binary")
MODEL = "Qwen/Qwen2.5-7B-Instruct"  # catalogued: its size is known without a download


def spec(tmp_path: Path, **training: Any) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tune", "base_model": MODEL, "data": {"train": "s3://data/train.jsonl", "max_seq_len": 4096},
        "output": {"uri": "s3://runs/tune/"}, "resources": {"gpu": "h100", "nodes": 2, "gpus_per_node": 8},
        "training": {"max_steps": 2000, "per_device_batch_size": 2, "grad_accum": 4, **training},
    }))
    return path


def render(path: Path, *args: str) -> tuple[dict[str, Any], str]:
    done = CliRunner().invoke(main, ["render", str(path), *args])
    assert done.exit_code == 0, done.output
    (job,) = [d for d in helm.parse_manifests(done.stdout) if d["kind"] == "Job"
              and d["metadata"]["labels"]["app.kubernetes.io/component"] == "training"]
    return job["spec"], done.stderr


def expected(params: int, steps: int, world: int, flops_per_token: int, peak: float) -> int:
    compute = flops_per_token * params * steps * 2 * 4 * world * 4096 / (world * peak * DEADLINE_MFU)
    return math.ceil((DEADLINE_FACTOR * compute + DEADLINE_STARTUP_HOURS * 3600) / 3600) * 3600


def test_auto_is_three_times_the_estimate_plus_the_start_in_whole_hours(tmp_path: Path) -> None:
    params = from_hf_config(catalog.lookup(MODEL), MODEL).total_params
    job, err = render(spec(tmp_path))
    seconds = job["activeDeadlineSeconds"]
    assert seconds == expected(params, 2000, 16, 6, H100_80.bf16_flops) and seconds % 3600 == 0
    assert f"deadline: {seconds // 3600} h (resources.deadline auto: 3 x" in err
    assert "for 2000 steps at 10% of 16 H100 80GB's bf16 peak, + 2 h to start)" in err
    # what the estimate scales with: steps, checkpointing's second forward, a slower board
    longer, _ = render(spec(tmp_path, max_steps=8000))
    assert longer["activeDeadlineSeconds"] == expected(params, 8000, 16, 6, H100_80.bf16_flops) > seconds
    ckpt, _ = render(spec(tmp_path, gradient_checkpointing=True))
    assert ckpt["activeDeadlineSeconds"] == expected(params, 2000, 16, 8, H100_80.bf16_flops)
    anywhere, err = render(spec(tmp_path), "--set", "resources.gpu=any")  # could land on an A10G: the slowest
    assert anywhere["activeDeadlineSeconds"] == expected(params, 2000, 16, 6, A10G.bf16_flops)
    assert "A10G 24GB's bf16 peak" in err


def test_without_max_steps_or_a_known_model_there_is_none_and_it_says_how(tmp_path: Path) -> None:
    job, err = render(spec(tmp_path), "--set", "training.max_steps=null")
    assert "activeDeadlineSeconds" not in job
    assert ("deadline: none (resources.deadline auto: training.max_steps is unset, so the run's length depends on "
            "the data); a hung job holds its GPUs until cancelled: set e.g. `--set resources.deadline=48h`") in err
    job, err = render(spec(tmp_path), "--set", "base_model=s3://models/mine/")
    assert "activeDeadlineSeconds" not in job and "the base model's size is not known here" in err


def test_a_stated_deadline_or_none(tmp_path: Path) -> None:
    job, err = render(spec(tmp_path), "--set", "resources.deadline=1d12h")
    assert job["activeDeadlineSeconds"] == 36 * 3600 and "deadline: 36 h (resources.deadline: 1d12h)" in err
    job, err = render(spec(tmp_path), "--set", "resources.deadline=none")
    assert "activeDeadlineSeconds" not in job and "deadline: none (resources.deadline: none)" in err


def test_a_local_run_has_no_deadline(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    path = tmp_path / "local.yaml"
    path.write_text(yaml.safe_dump({"name": "tune", "base_model": MODEL, "data": {"train": "train.jsonl"},
                                    "resources": {"gpu": "none", "deadline": "2h"}}))
    job, _ = render(path, "--local")
    assert "activeDeadlineSeconds" not in job


@pytest.mark.parametrize(("value", "seconds"), [("36h", 129600), ("2d", 172800), ("1h30m", 5400), ("90m", 5400),
                                                ("45s", 45), (3600, 3600), ("auto", None), ("none", None)])
def test_durations(value: object, seconds: int | None) -> None:
    assert ResourcesSpec(deadline=value).deadline_seconds == seconds


def test_a_bad_deadline_is_a_clear_error(tmp_path: Path) -> None:
    done = CliRunner().invoke(main, ["validate", str(spec(tmp_path)), "--set", "resources.deadline=1.5h"])
    assert done.exit_code == 2
    assert "resources.deadline: '1.5h' is not a duration: write e.g. `36h`, `90m`, `2d` or `1h30m`; or `auto`" in done.output
