"""`training.prefetch` on 2 CPU ranks, started as a pod starts the trainer (tests/strategy_contract.py: supervise ->
accelerate launch -> trainer.train), for `zero3` (DeepSpeed; `ddp` and the others run 2 ranks with the default prefetch 2 in
test_strategies.py): with 2 steps' batches made ahead by
the worker thread, the run

- exits 0 on every rank, with no abort at exit ("terminate called without an active exception": a thread left
  running torch code, or gloo torn down by the interpreter's exit, trainer/train/preemption.py
  `release_process_group`), also across the mid-run checkpoint, whose per-rank data positions are gathered on
  the main thread while the worker runs ahead;
- trains the same batches as prefetch 0: the same loss at every step, the same adapter, the same data accounting.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests import strategy_contract as contract

pytestmark = [pytest.mark.slow, pytest.mark.integration]
STEPS = 4
ABORT = "terminate called"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return contract.build_model(tmp_path_factory.mktemp("prefetch-ranks") / "qwen2-tiny", "tiny", "float32")


def train(strategy: str, model: Path, workdir: Path, prefetch: int) -> tuple[Path, list[float]]:
    """One 2-rank run; (its output folder, its training loss at every step)."""
    from mlflow import MlflowClient

    plan = contract.Plan(strategy, model, workdir, cpu=True, processes=2, steps=STEPS, save_steps=2, resume=False,
                         timeout=600, n_train=48, prefetch=prefetch)
    contract.write_data(workdir / "data", plan.n_train, plan.n_eval)
    log = workdir / "train.log"
    code = contract.launch(plan, f"prefetch-{strategy}-{prefetch}", log)
    text = log.read_text(errors="replace")
    assert code == 0, f"prefetch {prefetch}: exited {code}\n{contract.tail(log, 60)}"
    assert ABORT not in text, f"prefetch {prefetch}: a rank aborted\n{contract.tail(log, 60)}"
    output = workdir / "out"
    marker = json.loads((output / "_SUCCESS").read_text())
    assert marker["steps"] == STEPS, marker
    history = MlflowClient(tracking_uri=marker["tracking_uri"]).get_metric_history(marker["run_id"], "loss")
    losses = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(losses) == STEPS and all(math.isfinite(x) for x in losses), losses
    return output, losses


# zero3, where the abort was seen; every strategy of tests/integration/test_strategies.py runs 2 ranks with the
# default prefetch 2 too (exit codes checked), so this one adds the comparison with prefetch 0
@pytest.mark.parametrize("strategy", ["zero3"])
def test_two_ranks_with_prefetch_exit_cleanly_and_train_the_batches_of_prefetch_0(strategy: str, model: Path,
                                                                                  tmp_path: Path) -> None:
    ahead, ahead_losses = train(strategy, model, tmp_path / "ahead", 2)
    plain, plain_losses = train(strategy, model, tmp_path / "plain", 0)
    assert "prefetch: 2" in (ahead / "spec.yaml").read_text()
    assert ahead_losses == pytest.approx(plain_losses, rel=1e-6, abs=0), (ahead_losses, plain_losses)
    assert contract.relative_difference(plain / "adapter", ahead / "adapter") <= 1e-6
    stats = [json.loads((o / "data_stats.json").read_text())["train"] for o in (plain, ahead)]
    for s in stats:
        s.pop("files")  # each run its own folder
    assert stats[0] == stats[1] and stats[0]["rows_used"] > 0, stats
