"""trainer.spec.strategy: spec -> accelerate config, read back by accelerate's own config loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from accelerate.commands.config.config_args import load_config_from_file

from trainer.spec import strategy
from trainer.spec.job import JobSpec


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


@pytest.mark.parametrize(("dtype", "expected"), [("bfloat16", "bf16"), ("float32", "no")])
def test_gpu_mixed_precision_follows_model_dtype(dtype: str, expected: str, tmp_path: Path) -> None:
    config = read_back(gpu(dtype=dtype), tmp_path)
    assert config.mixed_precision == expected
    assert config.use_cpu is False
    assert strategy.render(gpu(dtype="float16"))["mixed_precision"] == "fp16"  # rendered, but refused (below)


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
def test_fsdp_is_fsdp2_for_lora(checkpointing: bool, tmp_path: Path) -> None:
    config = read_back(gpu(strat="fsdp", gradient_checkpointing=checkpointing), tmp_path)
    fsdp = config.fsdp_config
    assert config.distributed_type.value == "FSDP" and config.mixed_precision == "bf16"
    assert fsdp["fsdp_version"] == 2  # v1 + LoRA crashes in step 2 (issue 13)
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp  # the model's _no_split_modules: its decoder layers
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"  # the only type Trainer.save_model writes under FSDP
    assert fsdp["fsdp_reshard_after_forward"] is True and fsdp["fsdp_cpu_ram_efficient_loading"] is True
    # never accelerate's checkpoint wrapper: peft 0.21 then saves an empty adapter; the model checkpoints itself
    assert fsdp["fsdp_activation_checkpointing"] is False
    # FSDP1-only settings would be ignored (or warned about) by FSDP2
    assert not {"fsdp_use_orig_params", "fsdp_sync_module_states", "fsdp_backward_prefetch",
                "fsdp_forward_prefetch", "fsdp_sharding_strategy"} & set(fsdp)


def fsdp_plugin_as_launched(spec: JobSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The FSDP plugin a worker builds: `accelerate launch` turns the config file into the workers' environment
    (`prepare_multi_gpu_env`), and `Accelerator` builds its plugin from that environment."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    path = tmp_path / "accelerate.yaml"
    path.write_text(strategy.accelerate_config_yaml(spec))
    args = launch_command_parser().parse_args([
        "--config_file", str(path), "--machine_rank", "0", "--main_process_ip", "10.0.0.1",
        "--main_process_port", "29500", "-m", "trainer.train", "--spec", "spec.yaml"])
    args, _, _ = _validate_launch_command(args)
    for name, value in prepare_multi_gpu_env(args).items():
        if name.startswith(("FSDP_", "ACCELERATE_")):
            monkeypatch.setenv(name, value)
    return FullyShardedDataParallelPlugin()


@pytest.mark.parametrize("offload", ["none", "all"])
def test_fsdp_config_reaches_the_workers_as_fsdp2(offload: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy
    from torch.distributed.fsdp.fully_sharded_data_parallel import StateDictType
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = fsdp_plugin_as_launched(gpu(strat="fsdp", offload=offload, gradient_checkpointing=True), tmp_path,
                                     monkeypatch)
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert plugin.state_dict_type == StateDictType.FULL_STATE_DICT
    assert plugin.auto_wrap_policy is transformer_auto_wrap_policy and plugin.transformer_cls_names_to_wrap is None
    assert plugin.cpu_ram_efficient_loading is True and plugin.activation_checkpointing is False
    assert isinstance(plugin.cpu_offload, CPUOffloadPolicy if offload == "all" else OffloadPolicy)


def test_fsdp_on_cpu_is_refused_with_the_field_and_the_alternatives() -> None:
    spec = cpu(2, "fsdp")
    (problem,) = strategy.check(spec)
    assert problem.startswith("training.strategy:") and "`ddp`, `zero2` or `zero3`" in problem
    assert "GPUs only" in problem
    with pytest.raises(strategy.StrategyError) as e:
        strategy.accelerate_config(spec)
    assert e.value.problems == [problem]
    assert strategy.render(spec)["distributed_type"] == "FSDP"  # what the CPU contract test runs anyway


@pytest.mark.parametrize(("adapter", "model", "field"), [
    ({"init": "pissa"}, {}, "adapter.init: `pissa`"),
    ({"init": "loftq"}, {}, "adapter.init: `loftq`"),
    ({"method": "dora"}, {}, "adapter.method: `dora`"),
    ({}, {"quantization": "4bit"}, "model.quantization: `4bit` (QLoRA)"),
    ({}, {"quantization": "8bit"}, "model.quantization: `8bit` (QLoRA)"),
    ({"target_parameters": ["mlp.experts.down_proj"], "dropout": 0.0}, {}, "adapter.target_parameters"),
])
def test_what_no_contract_covers_is_refused_under_sharded_strategies(
    adapter: dict[str, Any], model: dict[str, Any], field: str
) -> None:
    for strat in ("zero2", "zero3", "fsdp"):
        spec = make_spec(resources={"gpu": "h100"}, training={"strategy": strat}, adapter=adapter, model=model)
        (problem,) = strategy.check(spec)
        assert problem.startswith(f"{field} under `training.strategy: {strat}` is not proven"), problem
        assert "use strategy `ddp`" in problem and "plain LoRA on unquantized weights" in problem
        with pytest.raises(strategy.StrategyError):
            strategy.accelerate_config(spec)
    # ddp runs each of them (the unit and integration tests of trainer/model/load.py)
    assert strategy.check(make_spec(resources={"gpu": "h100"}, adapter=adapter, model=model)) == []


def test_flash_attention_on_gpus_is_refused_and_names_sdpa() -> None:
    for strat in ("ddp", "fsdp"):
        spec = make_spec(resources={"gpu": "h100"}, training={"strategy": strat},
                         model={"attn_implementation": "flash_attention_2"})
        (problem,) = strategy.check(spec)
        assert problem.startswith("model.attn_implementation: `flash_attention_2` is not proven") and "`sdpa`" in problem


def test_float16_on_gpus_is_refused_and_names_bfloat16() -> None:
    for strat in ("ddp", "zero2", "zero3", "fsdp"):
        (problem,) = strategy.check(gpu(strat=strat, dtype="float16"))
        assert problem.startswith("model.dtype: `float16` on GPUs is not proven") and "`bfloat16`" in problem
    assert strategy.check(make_spec(resources={"gpu": "none"}, model={"dtype": "float16"})) == []


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
