"""Every seed workflow's real form (examples/seedNNN-*.yaml) is a valid spec that `launch plan` sizes
for its GPUs and `launch submit --dry-run` renders through the real chart, as its user runs it."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import main
from tests.seeds import EXAMPLES, REPO, SEEDS, Seed

SEED_IDS = sorted(SEEDS)


def launch(*args: str) -> tuple[int, str]:
    done = CliRunner().invoke(main, list(args))
    return done.exit_code, done.stdout + done.stderr


def test_every_seed_example_is_tested_and_documented() -> None:
    """One page per seed, showing the stand-in command the tests run (every override, quoted for a shell)."""
    examples = {p.name.split("-", 1)[0] for p in EXAMPLES.glob("seed*.yaml") if not p.name.endswith("-values.yaml")}
    assert examples == set(SEEDS)
    for seed in SEEDS.values():
        page = REPO / "docs" / "seeds" / seed.example.replace(".yaml", ".md")
        assert page.is_file(), f"{seed.example} has no user page {page}"
        text = " ".join(page.read_text().replace("\\\n", " ").split())
        assert re.search(rf"launch submit --local (examples/)?{re.escape(seed.example)} ", text), page
        missing = [o for o in seed.overrides(Path("X")) if not o.startswith("base_model=")
                   and f"--set {shlex.quote(o)}" not in text]
        assert not missing, f"{page.name} does not show the stand-in overrides {missing} (tests/seeds.py)"


@pytest.mark.parametrize("seed_id", SEED_IDS)
def test_real_form_plans_on_its_gpus(seed_id: str) -> None:
    seed: Seed = SEEDS[seed_id]
    code, out = launch("plan", str(seed.path), "-o", "json")
    assert code == 0, out
    plans = json.loads(out)
    for plan in plans if isinstance(plans, list) else [plans]:
        assert plan["fits"], plan  # the real form is sized for the GPUs it asks for
    for variant in seed.variants:  # the other bases the docs name run from the same spec
        code, out = launch("plan", str(seed.path), *[x for o in variant for x in ("--set", o)])
        assert code == 0 and "fits" in out, out


@pytest.mark.parametrize("seed_id", SEED_IDS)
def test_real_form_renders_for_a_cluster(seed_id: str, helm_binary: str) -> None:
    seed = SEEDS[seed_id]
    args = ["submit", "--dry-run", str(seed.path), "-n", "ml"]
    if seed.values:
        args += ["-f", str(EXAMPLES / seed.values)]
    code, out = launch(*args)
    assert code == 0, out
    assert "kind: Job" in out and "nvidia.com/gpu" in out
    assert "warning" not in out.lower(), out  # nothing a cluster would refuse (local paths, missing secrets)


def test_gpt_oss_seeds_adapt_the_experts_and_the_plan_says_so() -> None:
    for seed_id, narrow in (("seed000", ["--set", "matrix.dimension=[lineage]"]), ("seed001", [])):
        code, out = launch("plan", str(SEEDS[seed_id].path), *narrow)
        assert code == 0, out
        assert "+ parameters [mlp.experts.gate_up_proj, mlp.experts.down_proj]: 184.91M trainable" in out, out
        assert "eager attention" in out
