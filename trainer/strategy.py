"""Spec -> accelerate configuration (the file every pod passes to `accelerate launch --config_file`).

Torch-free: the launcher imports this to render the chart. What each strategy becomes:

- `ddp`: `MULTI_GPU` (torchrun underneath), or `NO` for a single process.
- `zero2` / `zero3`: `DEEPSPEED` with the DeepSpeed settings inline; multi-node through the
  `standard` (torchrun) launcher, never pdsh/ssh.
- `fsdp`: `FSDP` v1 with `use_orig_params` (LoRA mixes frozen and trainable weights in one
  module) and transformer-layer auto wrap (the model's `_no_split_modules`).

CPU jobs (`resources.gpu: none`). `accelerate launch --cpu --num_processes N` starts ONE process,
so a CPU job with more than one process uses `MULTI_GPU` + `use_cpu: true`, which really starts
N processes through torchrun. Two environment facts go with it (`process_env`):

- DDP: the workers must see `ACCELERATE_USE_CPU=true`, else each of them believes it is alone
  (world size 1, no process group, no error). accelerate sets it only for single-process runs.
- DeepSpeed: `ACCELERATE_USE_CPU` must NOT be set (accelerate then skips DeepSpeed), and
  `DS_ACCELERATOR=cpu`. The training code must name the backend, e.g.
  `TrainingArguments(ddp_backend="gloo")`, since without CUDA accelerate finds none by itself.
  DeepSpeed JIT-builds its shared-memory collective op on first use (needs a C++ compiler;
  cached under `TORCH_EXTENSIONS_DIR`). Mixed precision is `no` on CPU.
"""

from __future__ import annotations

from typing import Any

import yaml

from trainer.spec import JobSpec

GPU_PRECISION = {"bfloat16": "bf16", "float16": "fp16", "float32": "no"}


class StrategyError(ValueError):
    """A spec whose strategy cannot run on its resources; one line per problem, field path first."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def is_gpu_job(spec: JobSpec) -> bool:
    return spec.resources.gpu != "none"


def mixed_precision(spec: JobSpec) -> str:
    """`bf16` / `fp16` / `no` from `model.dtype`; always `no` on CPU (slow or unsupported there)."""
    return GPU_PRECISION[spec.model.dtype] if is_gpu_job(spec) else "no"


def check(spec: JobSpec) -> list[str]:
    """Problems that make the strategy impossible on these resources (empty when fine)."""
    t = spec.training
    problems = []
    if t.strategy == "fsdp" and not is_gpu_job(spec):
        problems.append("training.strategy: `fsdp` needs GPUs (resources.gpu is `none`); on CPU use `ddp`, `zero2` or "
                        "`zero3`")
    if t.offload != "none" and t.strategy == "ddp":
        problems.append("training.offload: needs a sharded strategy (`zero2`, `zero3` or `fsdp`); `ddp` keeps "
                        "everything on the GPU (set training.strategy, or offload: none)")
    if t.offload == "all" and t.strategy == "zero2":
        problems.append("training.offload: `all` offloads parameters, which ZeRO-2 does not shard; use `zero3`, or "
                        "offload: optimizer")
    if t.offload == "optimizer" and t.strategy == "fsdp":
        problems.append("training.offload: FSDP offloads parameters and gradients together; use offload: all")
    if t.offload != "none" and not is_gpu_job(spec):
        problems.append("training.offload: moves GPU state to CPU memory; a CPU job (resources.gpu: none) has none")
    return problems


def deepspeed_config(spec: JobSpec) -> dict[str, Any]:
    stage = 3 if spec.training.strategy == "zero3" else 2
    config: dict[str, Any] = {
        "zero_stage": stage,
        "offload_optimizer_device": "cpu" if spec.training.offload in ("optimizer", "all") else "none",
        "offload_param_device": "cpu" if spec.training.offload == "all" else "none",
        "zero3_init_flag": stage == 3,
        # gradient_accumulation_steps / gradient_clipping stay unset ("auto"): the trainer's
        # TrainingArguments fill them from the same spec, so they cannot disagree.
        "deepspeed_multinode_launcher": "standard",
    }
    if stage == 3:
        config["zero3_save_16bit_model"] = True
    return config


def fsdp_config(spec: JobSpec) -> dict[str, Any]:
    return {
        "fsdp_version": 1,
        "fsdp_sharding_strategy": "FULL_SHARD",
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # layer classes: the model's _no_split_modules
        "fsdp_use_orig_params": True,
        "fsdp_backward_prefetch": "BACKWARD_PRE",
        "fsdp_forward_prefetch": False,
        "fsdp_offload_params": spec.training.offload == "all",
        "fsdp_state_dict_type": "SHARDED_STATE_DICT",
        "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_sync_module_states": True,
        "fsdp_activation_checkpointing": spec.training.gradient_checkpointing,
    }


def distributed_type(spec: JobSpec) -> str:
    strategy = spec.training.strategy
    if strategy in ("zero2", "zero3"):
        return "DEEPSPEED"
    if strategy == "fsdp":
        return "FSDP"
    return "MULTI_GPU" if spec.resources.world_size > 1 else "NO"


def accelerate_config(spec: JobSpec) -> dict[str, Any]:
    """The accelerate config for this spec; raises StrategyError when `check` finds a problem."""
    problems = check(spec)
    if problems:
        raise StrategyError(problems)
    kind = distributed_type(spec)
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": kind,
        "use_cpu": not is_gpu_job(spec),
        "mixed_precision": mixed_precision(spec),
        "num_machines": spec.resources.nodes,
        "num_processes": spec.resources.world_size,
        "machine_rank": 0,  # each pod passes its own --machine_rank
        "rdzv_backend": "static",
        "same_network": False,
        "main_training_function": "main",
        "downcast_bf16": "no",
        "debug": False,
    }
    if kind == "DEEPSPEED":
        config["deepspeed_config"] = deepspeed_config(spec)
    elif kind == "FSDP":
        config["fsdp_config"] = fsdp_config(spec)
    return config


def accelerate_config_yaml(spec: JobSpec) -> str:
    return yaml.safe_dump(accelerate_config(spec), sort_keys=False)


def process_env(spec: JobSpec) -> dict[str, str]:
    """Environment the launched processes need for this config (see the module docstring)."""
    if is_gpu_job(spec):
        return {}
    if distributed_type(spec) == "DEEPSPEED":
        return {"DS_ACCELERATOR": "cpu"}
    return {"ACCELERATE_USE_CPU": "true"}
