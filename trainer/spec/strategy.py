"""Spec -> accelerate configuration (the file every pod passes to `accelerate launch --config_file`).

Torch-free: the launcher imports this to render the chart. What each strategy becomes:

- `ddp`: `MULTI_GPU` (torchrun underneath), or `NO` for a single process.
- `zero2` / `zero3`: `DEEPSPEED` with the DeepSpeed settings inline; multi-node through the
  `standard` (torchrun) launcher, never pdsh/ssh.
- `fsdp`: `FSDP` version 2 (`torch.distributed.fsdp.fully_shard`, through accelerate): one shard
  group per decoder layer (transformer-layer auto wrap on the model's `_no_split_modules`, which
  in transformers 5.23 is exactly the decoder layer class of every family we train:
  `LlamaDecoderLayer`, `Qwen2DecoderLayer`, `Gemma3DecoderLayer`, ...; accelerate adds the
  embeddings and the final norm + head as groups of their own), parameters resharded after each
  forward, `FULL_STATE_DICT` so that `Trainer.save_model` writes the whole adapter (transformers
  writes nothing under FSDP with any other state dict type), and rank-0-only loading
  (`cpu_ram_efficient_loading`: the other ranks build the model on `meta` and get their shards
  from rank 0). Mixed precision is the top-level `mixed_precision` (bf16/fp16 compute; accelerate
  keeps the trainable LoRA weights in fp32).
  Activation checkpointing is NOT accelerate's `fsdp_activation_checkpointing`: that wraps each
  decoder layer in a `CheckpointWrapper`, so the module names gain `._checkpoint_wrapped_module`
  while the state dict's keys do not, and peft 0.21 (which finds the adapter's keys from the
  module names) then saves an adapter with no tensors at all, silently. So
  `training.gradient_checkpointing` has to be the model's own non-reentrant checkpointing under
  every strategy, fsdp included (trainer/model/load.py `add_adapter`); under FSDP2 that trains to the
  same weights as without it.
  Not FSDP v1: with LoRA it fails in step 2's forward (`_flat_param.py` `_use_sharded_views`
  asserts on a plain tensor where it expects a parameter; seen on an H200, issue 13), and its
  `SHARDED_STATE_DICT` final save writes no adapter at all.

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
- FSDP: refused on CPU (`check`). torch's `fully_shard` itself runs on gloo, but accelerate 1.15
  makes any CPU run `MULTI_CPU` and only turns a GPU type into `FSDP`: the job would silently
  train as plain DDP. tests/integration/test_strategies.py runs the FSDP2 path on CPU anyway,
  with that one routing decision patched (tests/fixtures/fsdp_on_cpu.py).

What each strategy is proven to do, and where: docs/cluster.md, "Strategies: what is proven where".
"""

from __future__ import annotations

from typing import Any

import yaml

from trainer.spec.errors import UsageError
from trainer.spec.job import JobSpec

GPU_PRECISION = {"bfloat16": "bf16", "float16": "fp16", "float32": "no"}
CPU_STRATEGIES = ("ddp", "zero2", "zero3")


class StrategyError(UsageError, ValueError):
    """A spec whose strategy cannot run on its resources; one line per problem, field path first."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def is_gpu_job(spec: JobSpec) -> bool:
    return spec.resources.gpu != "none"


def mixed_precision(spec: JobSpec) -> str:
    """`bf16` / `fp16` / `no` from `model.dtype`; always `no` on CPU (slow or unsupported there)."""
    return GPU_PRECISION[spec.model.dtype] if is_gpu_job(spec) else "no"


SHARDED = ("zero2", "zero3", "fsdp")
# What the strategy contract (tests/strategy_contract.py; docs/cluster.md) has shown under each sharded strategy:
# plain LoRA on unquantized weights, with or without gradient checkpointing and offload, bf16 on a GPU and fp32.
SHARDED_PROVEN = ("plain LoRA on unquantized weights (`model.quantization: none`, `adapter.method: lora`, "
                  "`adapter.init: default`, `target_modules` only), bf16 or fp32, with or without "
                  "`gradient_checkpointing` and `offload`")


def unproven(spec: JobSpec) -> list[str]:
    """Combinations no strategy contract run covers: refused here rather than found out on a cluster."""
    t, a, m = spec.training, spec.adapter, spec.model
    problems = []
    if t.strategy in SHARDED:
        def refuse(field: str, why: str, instead: str) -> None:
            problems.append(f"{field} under `training.strategy: {t.strategy}` is not proven ({why}): use strategy "
                            f"`ddp`, or {instead}. Under {t.strategy} kubetune runs {SHARDED_PROVEN} "
                            "(docs/cluster.md, strategies)")

        if m.quantization != "none":
            refuse(f"model.quantization: `{m.quantization}` (QLoRA)", "quantized weights sharded across ranks",
                   "quantization `none`")
        if a.method != "lora":
            refuse(f"adapter.method: `{a.method}`", "its magnitude vector needs each whole weight", "method `lora`")
        if a.init != "default":
            refuse(f"adapter.init: `{a.init}`", "it rewrites the base weights from each whole weight",
                   "init `default`")
        if a.target_parameters:
            refuse("adapter.target_parameters", "adapters on fused expert tensors", "no target_parameters")
    if m.attn_implementation == "flash_attention_2" and is_gpu_job(spec):
        problems.append(
            "model.attn_implementation: `flash_attention_2` is not proven: the trainer image has no flash-attn, and "
            "no strategy contract run used it; use `sdpa` (packed rows stay apart with it, docs/data.md)"
        )
    if m.dtype == "float16" and is_gpu_job(spec):
        problems.append("model.dtype: `float16` on GPUs is not proven (fp16 mixed precision with a loss scaler; no "
                        "strategy contract run covers it); use `bfloat16`, which every GPU kind we schedule computes "
                        "in natively, or `float32`")
    return problems


def check(spec: JobSpec) -> list[str]:
    """Problems that make the strategy impossible on these resources (empty when fine)."""
    t = spec.training
    problems = []
    if t.strategy not in CPU_STRATEGIES and not is_gpu_job(spec):
        problems.append(f"training.strategy: `{t.strategy}` needs GPUs (resources.gpu is `none`: accelerate runs FSDP "
                        f"on GPUs only); on CPU use {_listed(CPU_STRATEGIES)}")
    problems += unproven(spec)
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


def _listed(names: tuple[str, ...]) -> str:
    quoted = [f"`{n}`" for n in names]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}"


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
        # `stage3_gather_16bit_weights_on_model_save`. Not what saves the adapter: for a PEFT model transformers
        # 5.23 gathers the trainable weights itself (`_zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=
        # True)`, every rank), flag or not; it matters only where a whole-model save would be asked for.
        config["zero3_save_16bit_model"] = True
    return config


def fsdp_config(spec: JobSpec) -> dict[str, Any]:
    """accelerate's FSDP2 settings (see the module docstring). No layer class names: accelerate wraps the model's
    `_no_split_modules`, its decoder layers, so one config serves every architecture."""
    return {
        "fsdp_version": 2,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_reshard_after_forward": True,
        "fsdp_offload_params": spec.training.offload == "all",
        "fsdp_state_dict_type": "FULL_STATE_DICT",
        "fsdp_cpu_ram_efficient_loading": True,
        "fsdp_activation_checkpointing": False,  # the model checkpoints itself (module docstring)
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
    return render(spec)


def render(spec: JobSpec) -> dict[str, Any]:
    """The config without `check` (tests render what `check` refuses, e.g. fsdp on CPU)."""
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
