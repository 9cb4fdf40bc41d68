"""The strategy contract (tests/strategy_contract.py) on every architecture kubetune trains, 2 CPU ranks over gloo.

tests/integration/test_strategies.py holds every strategy to the contract on a tiny Qwen2 (tied embeddings, q/k/v
biases), resume included. What changes with the architecture is how the model is cut up: ZeRO-3 partitions every
parameter and gathers it per module, FSDP2 shards each decoder layer (`_no_split_modules`) and the rest at the root.
So the two sharding strategies run here on the other families our users train, each a tiny model of the real
architecture with its real tokenizer and chat template (tests/models.py):
- Llama 3 (untied output head, as DeepSeek-R1-Distill-Qwen has);
- Gemma 3 (scaled embeddings, MQA, sliding + full layers, a template that refuses system messages);
- gpt-oss (attention sinks with eager attention, a router over fused experts, packed masks built by kubetune);
- Qwen3-MoE (a router in every layer) and Phi-3 (fused qkv_proj and gate_up_proj).
`ddp` and `zero2` keep every rank's weights whole; their one architecture-specific case is gpt-oss with LoRA on the
fused experts (`adapter.target_parameters`, refused under the sharding strategies), which the seeds train under ddp.

Each run must train every step, save exactly the adapter PEFT makes (every `lora_B` trained), and reload to the
trainer's eval loss (fp32: 1e-5 relative), below the base model's. Resume is checked once per strategy in
test_strategies.py (the checkpoint does not depend on the architecture), and here for the expert LoRA.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import strategy_contract as contract
from tests.models import tiny_model
from trainer.model.arch import EXPERT_PARAMETERS

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.mark.parametrize("strategy", ["zero3", "fsdp"])
@pytest.mark.parametrize("arch", ["llama", "gemma3", "gpt_oss", "qwen3_moe", "phi3"])
def test_sharded_strategies_on_every_architecture(arch: str, strategy: str, tmp_path: Path) -> None:
    plan = contract.Plan(strategy, tiny_model(arch), tmp_path / "run", cpu=True, processes=2, steps=4,
                         save_steps=2, resume=False, timeout=600)
    result = contract.run(plan)
    assert result.passed, contract.table([result])
    assert result.tensors == result.expected_tensors > 0
    if arch == "gpt_oss":  # packed rows: the packing check found the masks missing and kubetune built them
        assert "kubetune builds the block-diagonal masks" in Path(result.log).read_text()


def test_expert_lora_on_two_ddp_ranks_trains_and_resumes(tmp_path: Path) -> None:
    """gpt-oss with LoRA on the fused experts too (seeds 000 and 001): each rank routes its own tokens to its own
    experts, and DDP must still reduce one gradient for every expert's LoRA; the job started again resumes exactly."""
    plan = contract.Plan("ddp", tiny_model("gpt_oss"), tmp_path / "run", cpu=True, processes=2, steps=4,
                         save_steps=2, resume=True, timeout=600,
                         adapter={"target_parameters": list(EXPERT_PARAMETERS["gpt_oss"])})
    result = contract.run(plan)
    assert result.passed, contract.table([result])
    assert result.tensors == result.expected_tensors > 0
    assert any("experts" in name for name in contract.expected_adapter(plan))
    assert result.resume_diff is not None and result.resume_diff <= plan.resume_tolerance
