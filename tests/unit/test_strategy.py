"""trainer.strategy: spec -> accelerate config, read back by accelerate's own config loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from trainer import strategy
from trainer.spec import JobSpec


def make_spec(**sections: Any) -> JobSpec:
    raw: dict[str, Any] = {"name": "demo", "base_model": "org/model", "data": {"train": "s3://b/train.jsonl"}}
    raw.update(sections)
    return JobSpec.model_validate(raw)


def cpu(nodes: int = 1, strat: str = "ddp") -> JobSpec:
    return make_spec(resources={"gpu": "none", "nodes": nodes}, training={"strategy": strat})


def gpu(nodes: int = 2, per_node: int = 8, strat: str = "ddp", dtype: str = "bfloat16", **training: Any) -> JobSpec:
    return make_spec(
        resources={"gpu": "h100", "nodes": nodes, "gpus_per_node": per_node},
        training={"strategy": strat, **training},
        model={"dtype": dtype},
    )


def read_back(spec: JobSpec, tmp_path: Path) -> Any:
    """The config as `accelerate launch --config_file` reads it (unknown keys raise there)."""
    path = tmp_path / "accelerate.yaml"
    path.write_text(strategy.accelerate_config_yaml(spec))
    return load_config_from_file(str(path))


def test_single_cpu_process_is_not_distributed(tmp_path: Path) -> None:
    config = read_back(cpu(1), tmp_path)
    assert (config.distributed_type.value, config.num_processes, config.num_machines) == ("NO", 1, 1)
    assert config.use_cpu is True and config.mixed_precision == "no"


def test_multi_process_cpu_ddp_really_starts_n_processes(tmp_path: Path) -> None:
    # `--cpu --num_processes N` would start one process; MULTI_GPU + use_cpu goes through torchrun
    spec = cpu(2)
    config = read_back(spec, tmp_path)
    assert (config.distributed_type.value, config.use_cpu) == ("MULTI_GPU", True)
    assert (config.num_machines, config.num_processes) == (2, 2)
    # ...and the workers must be told they are on CPU, or each one runs alone with world size 1
    assert strategy.process_env(spec) == {"ACCELERATE_USE_CPU": "true"}


@pytest.mark.parametrize(("dtype", "expected"), [("bfloat16", "bf16"), ("float16", "fp16"), ("float32", "no")])
def test_gpu_mixed_precision_follows_model_dtype(dtype: str, expected: str, tmp_path: Path) -> None:
    config = read_back(gpu(dtype=dtype), tmp_path)
    assert config.mixed_precision == expected
    assert config.use_cpu is False


def test_cpu_never_uses_mixed_precision() -> None:
    spec = make_spec(resources={"gpu": "none"}, model={"dtype": "bfloat16"})
    assert strategy.mixed_precision(spec) == "no"


def test_world_size_is_nodes_times_gpus(tmp_path: Path) -> None:
    config = read_back(gpu(nodes=4, per_node=8), tmp_path)
    assert (config.distributed_type.value, config.num_machines, config.num_processes) == ("MULTI_GPU", 4, 32)
    assert strategy.process_env(gpu()) == {}


@pytest.mark.parametrize("strat", ["zero2", "zero3"])
def test_deepspeed_inline_config(strat: str, tmp_path: Path) -> None:
    config = read_back(gpu(strat=strat), tmp_path)
    ds = config.deepspeed_config
    assert config.distributed_type.value == "DEEPSPEED"
    assert ds["zero_stage"] == (3 if strat == "zero3" else 2)
    assert ds["deepspeed_multinode_launcher"] == "standard"  # torchrun on every pod, never pdsh/ssh
    assert ds["zero3_init_flag"] is (strat == "zero3")
    assert ds.get("zero3_save_16bit_model", False) is (strat == "zero3")
    assert "deepspeed_config_file" not in ds and "gradient_accumulation_steps" not in ds


def test_deepspeed_on_cpu_env(tmp_path: Path) -> None:
    spec = cpu(2, "zero2")
    assert read_back(spec, tmp_path).mixed_precision == "no"
    # ACCELERATE_USE_CPU would make accelerate skip DeepSpeed entirely
    assert strategy.process_env(spec) == {"DS_ACCELERATOR": "cpu"}


@pytest.mark.parametrize("checkpointing", [True, False])
def test_fsdp_for_lora(checkpointing: bool, tmp_path: Path) -> None:
    config = read_back(gpu(strat="fsdp", gradient_checkpointing=checkpointing), tmp_path)
    fsdp = config.fsdp_config
    assert config.distributed_type.value == "FSDP"
    assert fsdp["fsdp_use_orig_params"] is True
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_activation_checkpointing"] is checkpointing
    assert fsdp["fsdp_cpu_ram_efficient_loading"] and fsdp["fsdp_sync_module_states"]


def test_fsdp_on_cpu_is_refused_with_the_field_and_the_alternatives() -> None:
    spec = cpu(2, "fsdp")
    (problem,) = strategy.check(spec)
    assert problem.startswith("training.strategy:") and "zero2" in problem
    with pytest.raises(strategy.StrategyError) as e:
        strategy.accelerate_config(spec)
    assert e.value.problems == [problem]


def test_every_strategy_on_gpu_passes_check() -> None:
    for strat in ("ddp", "zero2", "zero3", "fsdp"):
        assert strategy.check(gpu(strat=strat)) == []


@pytest.mark.parametrize(("strat", "offload", "optimizer", "params"), [
    ("zero2", "optimizer", "cpu", "none"), ("zero3", "optimizer", "cpu", "none"), ("zero3", "all", "cpu", "cpu"),
])
def test_deepspeed_offload(strat: str, offload: str, optimizer: str, params: str) -> None:
    ds = strategy.accelerate_config(gpu(strat=strat, offload=offload))["deepspeed_config"]
    assert (ds["offload_optimizer_device"], ds["offload_param_device"]) == (optimizer, params)


def test_fsdp_offload_and_impossible_combinations() -> None:
    assert strategy.accelerate_config(gpu(strat="fsdp", offload="all"))["fsdp_config"]["fsdp_offload_params"] is True
    for strat, offload, words in (("ddp", "optimizer", "sharded strategy"), ("zero2", "all", "ZeRO-2"),
                                  ("fsdp", "optimizer", "offload: all")):
        (problem,) = strategy.check(gpu(strat=strat, offload=offload))
        assert problem.startswith("training.offload:") and words in problem
