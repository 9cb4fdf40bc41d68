"""bench/throughput.py compares runs only at equal settings: any setting other than the one under test (trainer, data
pipeline, loss) that differs, or that one run lacks, makes `compare` refuse, naming the setting and both values."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_throughput", ROOT / "bench" / "throughput.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # light: torch, transformers and trl are imported only when the bench runs
    return module


def settings(**changes: str) -> dict[str, str]:
    base = {"precision": "base float32, adapter float32, no autocast", "gradient checkpointing": "off",
            "optimizer": "AdamW(lr=0.0001)", "batch": "4 rows x 1 accum x 1 rank(s)",
            "sequence budget": "512 tokens per row", "attention": "sdpa", "trainer": "kubetune",
            "data pipeline": "TrainStream", "loss": "chunked"}
    return base | changes


def run(bench: ModuleType, name: str, tokens: int, **changes: str):
    return bench.Run(name, settings=settings(**changes), step_times=[1.0, 2.0, 3.0, 10.0], trained=tokens,
                     real=2 * tokens, slots=4 * tokens)


def test_runs_that_differ_only_in_what_is_tested_are_compared(bench: ModuleType) -> None:
    ours = run(bench, "ours", 3200)
    trl = run(bench, "trl-padded", 800, trainer="trl SFTTrainer", **{"data pipeline": "datasets.map", "loss": "full"})
    bench.check_comparable({"ours": ours.settings, "trl-padded": trl.settings})
    assert bench.compare(ours, trl) == pytest.approx(4.0)


@pytest.mark.parametrize("key, value", [("precision", "base float32, adapter float32, bf16 autocast"),
                                        ("gradient checkpointing", "on"), ("optimizer", "AdamW(lr=2e-05)"),
                                        ("batch", "8 rows x 1 accum x 1 rank(s)"), ("attention", "eager"),
                                        ("sequence budget", "1024 tokens per row")])
def test_a_differing_setting_is_refused_and_named(bench: ModuleType, key: str, value: str) -> None:
    ours, other = run(bench, "ours", 3200), run(bench, "trl-padded", 800, **{key: value})
    with pytest.raises(bench.IncomparableRuns) as e:
        bench.compare(ours, other)
    assert key in str(e.value) and value in str(e.value) and settings()[key] in str(e.value)
    assert bench.differing(ours.settings, other.settings) == [key]


def test_a_setting_one_run_lacks_is_refused(bench: ModuleType) -> None:
    ours, other = run(bench, "ours", 3200), run(bench, "ceiling", 4000)
    del other.settings["attention"]
    with pytest.raises(bench.IncomparableRuns, match=r"attention: ours has 'sdpa', ceiling has '\(unset\)'"):
        bench.check_comparable({"ours": ours.settings, "ceiling": other.settings})


def test_every_run_is_checked_against_the_first(bench: ModuleType) -> None:
    runs = {"trl-padded": settings(), "trl-packing": settings(), "ours": settings(threads="1")}
    with pytest.raises(bench.IncomparableRuns, match="threads"):
        bench.check_comparable(runs)


def test_targets_refuse_unequal_baselines_and_the_table_marks_reference_runs(bench: ModuleType) -> None:
    ours, ceiling = run(bench, "ours", 3200), run(bench, "ceiling", 4000)
    trl = run(bench, "trl-padded", 800)
    defaults = run(bench, "trl-padded (defaults)", 100, precision="bf16 autocast", **{"gradient checkpointing": "on"})
    defaults.reference = True
    lines = bench.targets([trl, ours, ceiling, defaults])
    assert lines == ["target ours >= 3.0x trl-padded (equal settings): 4.00x met",
                     "target ours >= 70% of the ceiling: 80% met"]
    table = bench.results_table([trl, ours, ceiling, defaults])
    assert "refused*" in table and "differs from ours in gradient checkpointing, precision" in table
    trl.settings["precision"] = "bf16 autocast"
    with pytest.raises(bench.IncomparableRuns):
        bench.targets([trl, ours])


def test_step_time_statistics(bench: ModuleType) -> None:
    r = run(bench, "ours", 1)
    assert r.step_stats() == (2.5, 4.0, 10.0)


def test_a_run_faster_than_the_ceiling_is_flagged(bench: ModuleType) -> None:
    ours, ceiling = run(bench, "ours", 3200), run(bench, "ceiling", 2000)
    lines = bench.targets([ours, ceiling])
    assert lines[0] == "target ours >= 70% of the ceiling: 160% met"
    assert lines[1].startswith("warning: ours ran faster than the ceiling")
