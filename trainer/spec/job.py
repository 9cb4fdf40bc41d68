"""THE kubetune job spec: the only place defaults live.

Imported by the launcher (which must stay light), so this module imports no torch and no
ML library. Field descriptions are the user documentation: `docs/spec.md` is generated
from them (`python -m trainer.spec.doc`).
"""

from __future__ import annotations

import re
import string
from datetime import date
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from trainer.spec.base import GiB, Section, cpu_quantity, duration_seconds, gibibytes, quantity, quantity_value
from trainer.spec.export import ExportSpec

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
NAME_MAX = 40  # leaves room for the per-submission suffix and the pod index in a 63-char label
# Default requests of a training pod (resources.requests()): sized to fit the 8-GPU nodes of the clouds
# (96 vCPUs and 680 GB or more on A100 and H100 instance types, less the node's own reservations).
CPU_PER_GPU = 8
MEMORY_PER_GPU_GIB = 48
GPU_EPHEMERAL_GIB = 200
CPU_JOB_CPU = 4
CPU_JOB_MEMORY_GIB = 8
CPU_JOB_EPHEMERAL_GIB = 20
# `resources.deadline: auto` (launcher/plan/deadline.py): this many times the estimated run at this fraction of
# the GPUs' bf16 peak (LoRA runs on 8 GPUs reach 25-45%; a slow data source or small model less), plus the hours
# a start may take (pulling the image, downloading the base model, the rendezvous waiting for every node)
DEADLINE_FACTOR = 3
DEADLINE_MFU = 0.10
DEADLINE_STARTUP_HOURS = 2


class ModelSpec(Section):
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        "bfloat16",
        description="Compute dtype of the base weights. On CPU, float32 is fastest; bfloat16 "
        "works but runs slowly on most CPUs.",
    )
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "none",
        description="Load the base model quantized with bitsandbytes (QLoRA). `4bit` uses NF4 "
        "with double quantization.",
    )
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = Field(
        "sdpa",
        description="Attention kernel. `flash_attention_2` needs a CUDA GPU and the flash-attn "
        "package, which the trainer image does not have: `launch validate` refuses it for GPU jobs until a "
        "strategy contract run covers it. Packing keeps samples apart with every choice.",
    )
    trust_remote_code: bool = Field(
        False,
        description="Allow the base model's repository to run its own Python code. Off unless "
        "you trust that repository.",
    )
    chat_template: str | None = Field(
        None,
        description="A Jinja chat template file (local path or `s3://` URI) used instead of the "
        "tokenizer's own. Needed when the base model ships none, as base (non-instruct) models and "
        "many GGUF files do. It is saved with the tokenizer, so the adapter and exports carry it.",
    )


class AdapterSpec(Section):
    method: Literal["lora", "dora"] = Field("lora", description="`lora`, or `dora` (weight-decomposed LoRA).")
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(32, ge=1, description="LoRA alpha (scaling = alpha / r, or alpha / sqrt(r) with rslora).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    rslora: bool = Field(False, description="Rank-stabilised LoRA scaling (alpha / sqrt(r)).")
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear",
        description="Modules that get adapters: `all-linear` (every linear layer except the "
        "output head) or a list of module names such as `[q_proj, v_proj]`.",
    )
    target_parameters: list[str] | None = Field(
        None,
        description="Parameters (not modules) that also get LoRA adapters, for weights that are no linear layer: "
        "the fused 3-D expert tensors of mixture-of-experts models, where `all-linear` adapts only attention. For "
        "gpt-oss: `[mlp.experts.gate_up_proj, mlp.experts.down_proj]`. A name matches a parameter whose full name "
        "is it or ends in `.` + it; each expert gets its own rank-`r` pair. PEFT's parameter adapters support "
        "plain LoRA only: they need `method: lora`, `dropout: 0` and `init: default`.",
    )
    init: Literal["default", "pissa", "loftq"] = Field(
        "default", description="Adapter initialisation: `default` (B = 0), `pissa` or `loftq`."
    )

    @field_validator("target_modules")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("must name at least one module, or be `all-linear`")
        return v

    @field_validator("target_parameters")
    @classmethod
    def _parameter_names(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or not all(name.strip() for name in v)):
            raise ValueError("must name at least one parameter, e.g. `[mlp.experts.gate_up_proj]`, or be left out")
        return v

    @model_validator(mode="after")
    def _parameter_adapters_are_plain_lora(self) -> AdapterSpec:
        if not self.target_parameters:
            return self
        problems = [f"`{field}: {value}`" for field, value, ok in (
            ("method", self.method, self.method == "lora"),
            ("dropout", self.dropout, self.dropout == 0),
            ("init", self.init, self.init == "default")) if not ok]
        if problems:
            raise ValueError(
                f"target_parameters: PEFT's parameter adapters support plain LoRA only, not {', '.join(problems)}: "
                "set `adapter.method: lora`, `adapter.dropout: 0` and `adapter.init: default`, or leave out "
                "target_parameters")
        return self


class BadRowsSpec(Section):
    policy: Literal["skip", "fail"] = Field(
        "skip",
        description="`skip`: bad rows are counted, reported with their line numbers and logged; "
        "`fail`: the first bad row stops the job.",
    )
    max_bad_fraction: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="With `skip`, the job fails when more than this fraction of rows is bad.",
    )


class TemplateSpec(Section):
    """A user format: turns named fields of each row into one conversation."""

    system: str | None = Field(None, description="System message; may use `{field}` placeholders.")
    user: str = Field(..., description="User turn, e.g. `{question}`.")
    assistant: str = Field(..., description="Assistant turn, e.g. `<think>{thought}</think>{answer}`.")

    @field_validator("system", "user", "assistant")
    @classmethod
    def _placeholders(cls, v: str | None) -> str | None:
        if v is None:
            return v
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(v) if f is not None]
        except ValueError as e:
            raise ValueError(
                f"{e} in {v!r}: placeholders are `{{field}}`; write a literal brace as `{{{{` or `}}}}`"
            ) from None
        for f in fields:
            if f == "" or f.split(".")[0].split("[")[0].isdigit():
                raise ValueError(f"placeholder {{{f}}} in {v!r} must name a column, e.g. {{answer}} or {{meta.why}}")
        return v


class ColumnsSpec(Section):
    """Column names of the `instruction` format (alpaca style)."""

    instruction: str = Field("instruction", description="Column holding the instruction.")
    input: str = Field("input", description="Optional column appended to the instruction.")
    output: str = Field("output", description="Column holding the expected answer.")


class DataSpec(Section):
    train: str | list[str] = Field(
        ...,
        description="Training data: local paths or `s3://` URIs, globs allowed "
        "(`s3://bucket/train-*.jsonl`). JSONL or Parquet.",
    )
    eval: str | list[str] | None = Field(None, description="Held-out data, same forms as `train`.")
    format: Literal["messages", "sharegpt", "instruction", "template"] = Field(
        "messages",
        description="Row format: `messages` (OpenAI chat: `{messages: [{role, content}]}`), "
        "`sharegpt` (`{conversations: [{from, value}]}`), `instruction` "
        "(instruction / optional input / output) or `template` (see `data.template`).",
    )
    template: TemplateSpec | None = Field(None, description="Required with `format: template`.")
    columns: ColumnsSpec = Field(default_factory=ColumnsSpec, description="Column names for `format: instruction`.")
    system_prompt: str | None = Field(
        None, description="System message added to rows that have none (with `format: template`, use `template.system`)."
    )
    max_seq_len: int = Field(2048, ge=16, le=1_048_576, description="Longest sample in tokens.")
    too_long: Literal["bad_row", "truncate"] = Field(
        "bad_row",
        description="A sample longer than `max_seq_len`: a counted bad row, or truncated.",
    )
    packing: bool = Field(
        True,
        description="Pack several samples into each `max_seq_len` row (best-fit). Samples never "
        "attend to each other: position ids restart per sample.",
    )
    train_on: Literal["completions", "all"] = Field(
        "completions", description="Loss on assistant tokens only (`completions`) or on every token (`all`)."
    )
    reasoning: Literal["train", "mask"] = Field(
        "train",
        description="Assistant reasoning (a `thinking` or `reasoning_content` field, or `<think>...</think>` "
        "before the answer): `train` trains the whole assistant output, reasoning included; `mask` keeps the "
        "reasoning in the context but out of the loss, so only the answer (gpt-oss: the final channel's text; "
        "`<think>` models: the text after `</think>`) and its end-of-turn token are trained. Use `mask` when the "
        "reasoning is not the behaviour to learn (e.g. written by another model) but the answers should follow "
        "it. Turns whose reasoning the chat template drops (most drop it from all but the last assistant turn) "
        "are trained on their answer and counted as `reasoning_dropped_turns`. Needs `train_on: completions`.",
    )
    template_date: date | None = Field(
        None,
        description="The date (YYYY-MM-DD) that chat templates which write today's date into every prompt "
        "(gpt-oss's `Current date:`, Llama 3.2's `Today Date:`, Mistral Small 3.2's, Granite 3.3's) render, "
        "everywhere the job applies the template: training, eval, sample answers, the export's checks and task "
        "metrics. Rendering never reads the calendar, so a row tokenizes the same on every day of the job. Unset: "
        "`launch submit` records the day of submission in the spec it ships to the pods (`--local --resume` keeps "
        "the date the checkpoints were trained with); a trainer started by hand on a spec without one uses "
        "2024-07-26 (the date Llama 3.1's template writes when given none). Set it to train for the date your "
        "prompts will carry. Templates that do not ask for the date ignore it. Part of the data settings: a "
        "resumed job keeps it.",
    )
    bad_rows: BadRowsSpec = Field(default_factory=BadRowsSpec, description="What happens to rows that cannot be used.")

    @field_validator("template_date", mode="before")
    @classmethod
    def _iso_date(cls, v: Any) -> Any:
        if (isinstance(v, str) and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", v.strip())) or isinstance(v, int | float):
            raise ValueError(f"{v!r} is not a date written YYYY-MM-DD, e.g. 2025-08-05")
        return v

    @model_validator(mode="after")
    def _template_needs_template(self) -> DataSpec:
        if self.format == "template" and self.template is None:
            raise ValueError("`format: template` needs `data.template` with `user` and `assistant`")
        if self.format != "template" and self.template is not None:
            raise ValueError(f"`data.template` is only used with `format: template` (format is `{self.format}`)")
        if self.format == "template" and self.system_prompt is not None:
            raise ValueError("`data.system_prompt` is not used with `format: template`: put it in `data.template.system`")
        if self.reasoning == "mask" and self.train_on == "all":
            raise ValueError("`data.reasoning: mask` hides reasoning from the loss, but `data.train_on: all` trains "
                             "every token: set `train_on: completions`, or `reasoning: train`")
        return self


class TrainingSpec(Section):
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides `epochs` when set.")
    epochs: float = Field(1.0, gt=0, description="Passes over the training data (when `max_steps` is unset).")
    learning_rate: float = Field(2.0e-4, gt=0, lt=1, description="Peak learning rate.")
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule after warm-up."
    )
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Fraction of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    per_device_batch_size: int = Field(4, ge=1, description="Rows per device per micro-step.")
    grad_accum: int = Field(1, ge=1, description="Micro-steps per optimizer step.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations to save memory.")
    strategy: Literal["ddp", "zero2", "zero3", "fsdp"] = Field(
        "ddp",
        description="Distribution: `ddp`, DeepSpeed `zero2` / `zero3`, or `fsdp`. Becomes the "
        "generated accelerate configuration.",
    )
    offload: Literal["none", "optimizer", "all"] = Field(
        "none",
        description="Move state to CPU memory to fit larger models: `optimizer` (ZeRO-2/3: optimizer states), `all` "
        "(ZeRO-3: parameters too; FSDP: parameters and gradients). Slower; for `zero2`, `zero3` and `fsdp` only.",
    )
    seed: int = Field(42, description="Seed for data order, adapter init and dropout.")
    logging_steps: int = Field(1, ge=1, description="Log metrics every N optimizer steps.")
    save_steps: int | None = Field(
        None,
        ge=1,
        description="Write a checkpoint to `output.uri` every N steps (unset: only when the job is stopped by SIGTERM, "
        "e.g. preempted). A restarted job resumes from the latest one; see docs/operations.md.",
    )
    keep_checkpoints: int = Field(
        2, ge=1, le=100, description="Checkpoints kept in `output.uri/checkpoints/`; older ones are deleted."
    )
    eval_steps: int | None = Field(None, ge=1, description="Evaluate on `data.eval` every N steps (unset: at the end).")


class ResourcesSpec(Section):
    gpu: Literal["h100", "h200", "b200", "a100", "l40s", "a10g", "any", "none"] = Field(
        "h100",
        description="GPU type per node (`any`: any node with `nvidia.com/gpu`), or `none` for a CPU-only job "
        "(laptops, tests). The kinds are `launch plan`'s GPU catalog (launcher/plan/fit.py).",
    )
    gpus_per_node: int = Field(8, ge=1, le=16, description="GPUs per node (one process each). Ignored when `gpu: none`.")
    nodes: int = Field(1, ge=1, le=512, description="Nodes (pods) of the job.")
    cpu: str | None = Field(
        None,
        description=f"CPU request per pod, e.g. `32`; the chart sets the limit to the same (Guaranteed QoS: a quota "
        f"on `limits.cpu` admits the pod, the static CPU manager gives it whole cores). Unset: {CPU_PER_GPU} per GPU, "
        f"{CPU_JOB_CPU} for a CPU job.",
    )
    memory: str | None = Field(
        None,
        description=f"Memory request per pod, e.g. `400Gi`, and its limit (a pod over it is OOM-killed). It must "
        f"hold `shm_size` too: `/dev/shm` is memory and counts against the limit. Unset: {MEMORY_PER_GPU_GIB}Gi per "
        f"GPU (loading the model's shards, data workers) plus `shm_size`; {CPU_JOB_MEMORY_GIB}Gi plus `shm_size` for "
        "a CPU job.",
    )
    ephemeral_storage: str | None = Field(
        None,
        description="Local disk per pod (`ephemeral-storage` request and limit): the base model's download in "
        "`/cache`, checkpoints staged in `/tmp` before they are uploaded. A pod over it is evicted. Unset: "
        f"{GPU_EPHEMERAL_GIB}Gi for a GPU job, {CPU_JOB_EPHEMERAL_GIB}Gi for a CPU job.",
    )
    shm_size: str = Field("16Gi", description="Size of the memory-backed `/dev/shm` per pod (part of `memory`).")
    max_restarts: int = Field(
        10,
        ge=0,
        le=1000,
        description="Restarts a job may have (preemptions, evictions, node drains, retried failures; each start "
        "after the first counts, recorded in `<output>/checkpoints/restarts.json`); one more fails the job with exit "
        "2. Raise it to resume such a job: `launch submit SPEC --resume NAME --set resources.max_restarts=N`.",
    )
    deadline: str = Field(
        "auto",
        description="How long the training Job may run before Kubernetes stops its pods and fails it "
        "(`activeDeadlineSeconds`, reason DeadlineExceeded), so a job that hangs or keeps failing cannot hold its "
        f"GPUs forever. `auto`: {DEADLINE_FACTOR} times `launch`'s estimate of the run at {DEADLINE_MFU:.0%} of the "
        f"GPUs' bf16 peak, plus {DEADLINE_STARTUP_HOURS} h to start, in whole hours; it needs `training.max_steps` "
        "and a base model whose size `launch` knows, else the job has no deadline and `launch submit` says so (a CPU "
        "job: none, silently). "
        "`none`: no deadline. Or a duration: `36h`, `2d`, `1h30m`. It counts from the Job's start, time Pending "
        "included (Kueue starts it at admission); a resumed job starts it anew.",
    )
    queue: str | None = Field(
        None,
        description="Kueue LocalQueue the job is submitted to (the `kueue.x-k8s.io/queue-name` label); unset: "
        "no queue, the job starts when the scheduler places its pods.",
    )

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline(cls, v: object) -> str:
        if isinstance(v, str) and v.strip() in ("auto", "none"):
            return v.strip()
        try:
            duration_seconds(v, "resources.deadline")
        except ValueError as e:
            raise ValueError(f"{e}; or `auto` (from the run's estimate), or `none`") from None
        return f"{v}".strip()

    @property
    def deadline_seconds(self) -> int | None:
        """The deadline the spec states; None for `auto` (the launcher's estimate) and `none`."""
        return None if self.deadline in ("auto", "none") else duration_seconds(self.deadline, "resources.deadline")

    @field_validator("queue")
    @classmethod
    def _queue_name(cls, v: str | None) -> str | None:
        if v is not None and not DNS_LABEL.match(v):
            raise ValueError(f"{v!r} is not a queue name: lowercase letters, digits and '-' (a LocalQueue's name)")
        return v

    @property
    def processes_per_node(self) -> int:
        return 1 if self.gpu == "none" else self.gpus_per_node

    @property
    def world_size(self) -> int:
        return self.nodes * self.processes_per_node

    @field_validator("cpu", mode="before")
    @classmethod
    def _cpu(cls, v: object) -> str | None:
        return cpu_quantity(v, "`32` or `500m`")

    @field_validator("memory", "ephemeral_storage", "shm_size")
    @classmethod
    def _bytes(cls, v: str | None) -> str | None:
        return quantity(v, "`400Gi`")

    @model_validator(mode="after")
    def _memory_holds_shm(self) -> ResourcesSpec:
        if self.memory and quantity_value(self.memory) <= quantity_value(self.shm_size):
            raise ValueError(f"resources.memory ({self.memory}) is not more than resources.shm_size "
                             f"({self.shm_size}): /dev/shm is memory and counts against the pod's memory limit; "
                             "raise resources.memory or lower resources.shm_size")
        return self

    def requests(self) -> dict[str, str]:
        """Requests of each training pod (the chart sets limits equal to them): the spec's, else the defaults
        its field descriptions state."""
        gpus = 0 if self.gpu == "none" else self.gpus_per_node
        cpu = str(CPU_PER_GPU * gpus) if gpus else str(CPU_JOB_CPU)
        memory = (MEMORY_PER_GPU_GIB * gpus if gpus else CPU_JOB_MEMORY_GIB) * GiB + quantity_value(self.shm_size)
        disk = GPU_EPHEMERAL_GIB if gpus else CPU_JOB_EPHEMERAL_GIB
        return {"cpu": self.cpu or cpu, "memory": self.memory or gibibytes(memory),
                "ephemeral-storage": self.ephemeral_storage or f"{disk}Gi"}


class TrackingSpec(Section):
    mlflow_uri: str | None = Field(
        None,
        description="MLflow tracking server. Unset: a local `sqlite:///` store under the output folder.",
    )
    experiment: str | None = Field(None, description="MLflow experiment (unset: the job name).")
    flush_timeout: int = Field(
        300,
        ge=0,
        le=86_400,
        description="Seconds the end of a job waits for an unreachable MLflow server to take the metrics buffered "
        "while it was down; what is still unsent then is written to `<output>/mlflow-unsent.jsonl`.",
    )


class OutputSpec(Section):
    uri: str | None = Field(
        None,
        description="Where adapter, tokenizer, resolved spec and the `_SUCCESS` marker go: a "
        "local folder or `s3://` prefix (unset: `runs/<name>` next to the spec).",
    )


MetricName = Literal["exact_match", "rouge_l", "json_valid", "mermaid_valid", "cites_existing_source"]


class EvalSpec(Section):
    prompts: list[str] = Field(
        default_factory=list,
        description="Prompts answered before and after training (unset: the first user turns of `data.eval`).",
    )
    num_samples: int = Field(3, ge=0, le=100, description="Held-out prompts to sample when `prompts` is empty.")
    max_new_tokens: int = Field(64, ge=1, le=4096, description="Length of each sample answer.")
    metrics: list[MetricName] = Field(
        default_factory=list,
        description="Task metrics computed on greedy answers to held-out conversations (docs/evaluation.md): "
        "`exact_match`, `rouge_l`, `json_valid`, `mermaid_valid`, `cites_existing_source`.",
    )
    exact_match: Literal["normalized", "exact"] = Field(
        "normalized", description="`exact_match` ignores case and whitespace differences (`normalized`) or not."
    )
    sources_root: str | None = Field(
        None,
        description="Folder that paths cited in answers are looked up in (`cites_existing_source`): a local folder "
        "(relative to the spec's folder; local runs only) or an `s3://` prefix, copied once to the job's cache.",
    )

    @model_validator(mode="after")
    def _metrics(self) -> EvalSpec:
        if len(set(self.metrics)) != len(self.metrics):
            raise ValueError("eval.metrics lists a metric twice")
        if "cites_existing_source" in self.metrics and not self.sources_root:
            raise ValueError("metric `cites_existing_source` needs `eval.sources_root`: the folder cited paths must "
                             "exist in (e.g. the repository the answers document)")
        return self


class JobSpec(Section):
    name: str = Field(
        ...,
        description=f"Job name: lowercase letters, digits and `-`, at most {NAME_MAX} characters "
        "(DNS-1123). Prefix of every Kubernetes object and of the MLflow run.",
    )
    base_model: str = Field(
        ...,
        description="Base model: a hub id (`Qwen/Qwen2.5-7B-Instruct`), an `s3://` prefix, a local "
        "folder, or a `.gguf` file (loaded and de-quantized).",
    )
    model: ModelSpec = Field(default_factory=ModelSpec, description="How the base model is loaded.")
    adapter: AdapterSpec = Field(default_factory=AdapterSpec, description="The adapter that is trained.")
    data: DataSpec = Field(..., description="Training and evaluation data.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Optimisation and distribution.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Nodes and GPUs.")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="Experiment tracking.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Where results are written.")
    eval: EvalSpec = Field(default_factory=EvalSpec, description="Sample answers before and after training; task metrics.")
    export: ExportSpec | None = Field(
        None,
        description="Merge, GGUF, verify and register after training (unset: no export; `export: {}` for the defaults).",
    )
    matrix: dict[str, Any] | None = Field(
        None,
        description="One job per combination of values, e.g. `{dimension: [empathy, humor]}`: `${matrix.dimension}` "
        "in any string field (the name must use every key) is replaced by each job's value. Each job has its own "
        "name, MLflow run and registered model; `launch list` groups them. A submitted job's resolved spec holds "
        "its own values here.",
    )

    @field_validator("name")
    @classmethod
    def _dns_name(cls, v: str) -> str:
        if len(v) > NAME_MAX or not DNS_LABEL.match(v):
            raise ValueError(
                f"{v!r} is not a valid job name: use lowercase letters, digits and '-', start with a "
                f"letter, at most {NAME_MAX} characters (e.g. 'support-bot-v3')"
            )
        return v

    @field_validator("base_model")
    @classmethod
    def _base_model(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must name a model: a hub id, an s3:// prefix, a local folder or a .gguf file")
        return v

    @property
    def experiment(self) -> str:
        return self.tracking.experiment or self.name

