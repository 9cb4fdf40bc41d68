"""The strategy contract on CPU, 2 ranks over gloo, for every strategy (tests/strategy_contract.py).

Each strategy trains a tiny random Qwen2 (tied embeddings, q/k/v biases: Qwen2.5's layout) for 4
steps as a pod starts the trainer (`trainer.train.supervise` -> `accelerate launch` with the config
`trainer.spec.strategy` renders -> `trainer.train`), then: the adapter holds exactly the tensors PEFT
makes for the model (shapes included), every `lora_B` trained; base + adapter reloaded give the
eval loss the trainer reported within 1e-5 relative, below the base model's; the job started again
resumes from its step-2 checkpoint to the same adapter.

What runs here and how:
- `ddp`: gloo process group, `ACCELERATE_USE_CPU=true` (trainer/spec/strategy.py `process_env`);
- `zero2` / `zero3`: DeepSpeed with `DS_ACCELERATOR=cpu` (its shared-memory op JIT-built once into
  ~/.cache/kubetune-tests/torch_extensions);
- `fsdp`: accelerate's FSDP2 path for real (fully_shard, rank-0 loading, FULL_STATE_DICT save,
  checkpoints), except that accelerate 1.15 never chooses FSDP on CPU: tests/fixtures/fsdp_on_cpu.py
  makes that one decision as on GPUs. `launch` itself refuses `fsdp` on CPU (`strategy.check`), as
  a job would otherwise silently train as DDP (`test_accelerate_runs_fsdp_on_gpus_only`).
What only a GPU shows (NCCL, bf16 mixed precision, a 1.5B model): scripts/gpu_check.sh.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import strategy_contract as contract

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return contract.build_model(tmp_path_factory.mktemp("contract") / "qwen2-tiny", "tiny", "float32")


@pytest.mark.parametrize(("strategy", "checkpointing"), [
    ("ddp", False), ("zero2", False), ("zero3", False), ("fsdp", False),
    # accelerate's FSDP activation checkpointing made peft save an empty adapter: never again
    ("fsdp", True),
])
def test_contract_on_two_cpu_ranks(strategy: str, checkpointing: bool, model: Path, tmp_path: Path) -> None:
    plan = contract.Plan(strategy, model, tmp_path / "run", cpu=True, processes=2, steps=4, save_steps=2,
                         gradient_checkpointing=checkpointing, resume=True, timeout=600)
    result = contract.run(plan)
    assert result.passed, contract.table([result])
    assert result.tensors == result.expected_tensors > 0
    assert result.resume_diff is not None and result.resume_diff <= plan.resume_tolerance
    if strategy == "fsdp":  # the model's own checkpointing: on exactly when the spec asks for it
        log = Path(result.log).read_text()
        assert ("model activation checkpointing: 0 module(s)" in log) is not checkpointing, log[-3000:]


ROUTING = """
import os, sys
if sys.argv[1] == "patched":
    sys.path.insert(0, os.environ["FIXTURES"])
    import fsdp_on_cpu  # noqa: F401
from accelerate import Accelerator
print("TYPE", Accelerator(cpu=True).distributed_type.value)
"""


@pytest.mark.parametrize(("mode", "expected"), [("plain", "MULTI_CPU"), ("patched", "FSDP")])
def test_accelerate_runs_fsdp_on_gpus_only(mode: str, expected: str, tmp_path: Path) -> None:
    """Why `fsdp` is refused on CPU, and what tests/fixtures/fsdp_on_cpu.py changes: a CPU worker launched with
    an FSDP config (`ACCELERATE_USE_FSDP`, `FSDP_VERSION=2`) is `MULTI_CPU` in accelerate 1.15, so the job would
    train as plain DDP. When the plain case says FSDP, accelerate runs FSDP on CPU and `check` may allow it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))} | {
        "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(contract.free_port()), "ACCELERATE_USE_CPU": "true", "ACCELERATE_USE_FSDP": "true",
        "FSDP_VERSION": "2", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT", "FIXTURES": str(contract.FIXTURES),
        "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", ROUTING, mode], capture_output=True, text=True, env=env,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"TYPE {expected}" in done.stdout, done.stdout + done.stderr[-3000:]
