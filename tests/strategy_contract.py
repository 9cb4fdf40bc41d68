"""The strategy contract, checked the way a pod runs the trainer: one place for the CPU test and the GPU check.

For a strategy (`ddp`, `zero2`, `zero3`, `fsdp`, or `ddp-nccl`: `ddp` forced through accelerate's
`MULTI_GPU` path even for one process, i.e. torchrun and an NCCL process group; `zero2-offload`,
`zero3-offload`, `fsdp-offload`: the strategy with `training.offload` `optimizer`, `all`, `all`, GPU
only), on a model built here from a config (no hub):

1. the accelerate config is `trainer.spec.strategy`'s rendering of the job spec (`render`, so that a
   combination `check` refuses can still be tried), started as the chart starts it:
   `python -m trainer.train.supervise accelerate launch --config_file ... -m trainer.train --spec ...`,
   all processes on this machine (`--num_machines 1`), with `trainer.spec.strategy.process_env`;
2. the run succeeds (`_SUCCESS`, every step trained);
3. the adapter is complete: exactly the tensors PEFT makes for this model and `adapter` section
   (every targeted module's `lora_A` and `lora_B`, the right shapes), finite, every `lora_B`
   non-zero (trained: PEFT starts it at zero);
4. it reloads to the function the trainer had: base + adapter loaded afresh give the eval loss
   the trainer reported at the end of training (same rows, same batches), within a tolerance, and
   a lower one than the base model alone;
5. with `resume`: the same job started again (same `KUBETUNE_JOB_NAME` and output) resumes from
   its mid-run checkpoint and ends with the same adapter.

    python -m tests.strategy_contract build-model --shape tiny --out /tmp/m
    python -m tests.strategy_contract run --strategy zero3 --model /tmp/m --workdir /tmp/w --cpu --processes 2
    python -m tests.strategy_contract table /tmp/checks ddp zero3   (reads /tmp/checks/ddp/result.json ...)

Used by tests/integration/test_strategies.py (CPU, 2 ranks) and scripts/gpu_check.sh (one GPU).
Needs no llama.cpp files: the tokenizer is a byte-level one with a ChatML template, built here.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
STRATEGIES = ("ddp", "ddp-nccl", "fsdp", "zero2", "zero3", "zero2-offload", "zero3-offload", "fsdp-offload")
# contract name -> (training.strategy, training.offload)
TRAINING = {"ddp": ("ddp", "none"), "ddp-nccl": ("ddp", "none"), "fsdp": ("fsdp", "none"),
            "zero2": ("zero2", "none"), "zero3": ("zero3", "none"), "zero2-offload": ("zero2", "optimizer"),
            "zero3-offload": ("zero3", "all"), "fsdp-offload": ("fsdp", "all")}

CHATML = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen2.5-1.5B's shape (its config.json), random weights; `tiny` is the same architecture in small.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2.5-1.5b": {"vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
                     "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
                     "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
    "tiny": {"vocab_size": 320, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 1024,
             "rms_norm_eps": 1e-6, "tie_word_embeddings": True},
}
COUNTRIES = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Spain", "Madrid"),
             ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Chile", "Santiago")]


# -- model and data ----------------------------------------------------------------------------
def chatml_tokenizer() -> Any:
    """A byte-level tokenizer (256 byte tokens, no merges) + ChatML's special tokens and template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def build_model(out: Path, shape: str = "tiny", dtype: str = "float32", seed: int = 0) -> Path:
    """A randomly initialised Qwen2 model of `shape` with the ChatML tokenizer, saved to `out`."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    tok = chatml_tokenizer()
    dims = SHAPES[shape]
    if len(tok) > dims["vocab_size"]:
        raise ValueError(f"shape {shape}: vocab {dims['vocab_size']} < tokenizer {len(tok)}")
    config = Qwen2Config(**dims, bos_token_id=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def chat_rows(n: int, seed: int, system: bool = True) -> list[dict[str, Any]]:
    """`n` chats; each opens with a system message unless `system` is False (Gemma 3's template refuses one)."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        country, capital = rng.choice(COUNTRIES)
        rows.append({"messages": [
            *([{"role": "system", "content": "Answer in one sentence."}] if system else []),
            {"role": "user", "content": f"What is the capital of {country}?"},
            {"role": "assistant", "content": f"The capital of {country} is {capital}."},
        ]})
    return rows


def takes_system_message(model: Path) -> bool:
    """Whether the model's chat template renders a system message (Gemma 3's raises instead)."""
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(model).apply_chat_template(
            [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], tokenize=False)
    except Exception:  # noqa: BLE001 - jinja's TemplateError, raised by the template's own raise_exception
        return False
    return True


def write_data(folder: Path, n_train: int, n_eval: int, system: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("train", n_train, 1), ("eval", n_eval, 2)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_rows(n, seed, system)))


# -- the job -----------------------------------------------------------------------------------
@dataclass
class Plan:
    """One contract run: what to train and how to start it."""

    strategy: str
    model: Path
    workdir: Path
    cpu: bool = True
    processes: int = 2
    steps: int = 4
    save_steps: int | None = 2  # the resume check starts again from this checkpoint
    batch: int = 2
    max_seq_len: int = 256
    learning_rate: float = 3e-3
    gradient_checkpointing: bool = False
    resume: bool = True
    timeout: int = 900
    n_train: int = 96
    n_eval: int = 8
    loss: str | None = None  # training.loss (None: the spec's default)
    prefetch: int | None = None  # training.prefetch (None: the spec's default)
    adapter: dict[str, Any] = field(default_factory=dict)  # more `adapter` fields (e.g. target_parameters)

    @property
    def dtype(self) -> str:
        return "float32" if self.cpu else "bfloat16"

    @property
    def tolerance(self) -> float:
        """Reload vs trainer eval loss: fp32 on CPU agrees to rounding; bf16 compute on a GPU does not."""
        return 1e-5 if self.cpu else 5e-3

    @property
    def resume_tolerance(self) -> float:
        """Resumed vs uninterrupted adapter, relative: exact on CPU; GPU kernels need not be deterministic."""
        return 1e-5 if self.cpu else 2e-2


def job_spec(plan: Plan) -> dict[str, Any]:
    strategy, offload = TRAINING[plan.strategy]
    # CPU: one process per node, so N ranks are N nodes (all started here); GPU: one node of N GPUs.
    resources = ({"gpu": "none", "nodes": plan.processes} if plan.cpu
                 else {"gpu": "any", "nodes": 1, "gpus_per_node": plan.processes})
    return {
        "name": f"contract-{plan.strategy}",
        "base_model": str(plan.model),
        "model": {"dtype": plan.dtype},
        "adapter": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"} | plan.adapter,
        "data": {"train": "data/train.jsonl", "eval": "data/eval.jsonl", "max_seq_len": plan.max_seq_len},
        "training": {"strategy": strategy, "offload": offload, "max_steps": plan.steps, "save_steps": plan.save_steps,
                     "learning_rate": plan.learning_rate, "per_device_batch_size": plan.batch,
                     "warmup_ratio": 0.0, "lr_scheduler": "constant", "logging_steps": 1,
                     "gradient_checkpointing": plan.gradient_checkpointing}
                    | ({"loss": plan.loss} if plan.loss else {})
                    | ({} if plan.prefetch is None else {"prefetch": plan.prefetch}),
        "resources": resources,
        "output": {"uri": str(plan.workdir / "out")},
        "eval": {"num_samples": 0},
    }


def accelerate_config(plan: Plan, spec: Any) -> dict[str, Any]:
    """`trainer.spec.strategy`'s config for the spec, every process on this machine."""
    from trainer.spec import strategy

    config = strategy.render(spec) | {"num_machines": 1, "num_processes": plan.processes}
    if plan.strategy == "ddp-nccl":
        config["distributed_type"] = "MULTI_GPU"  # torchrun + a real process group even for one process
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fsdp_on_cpu(plan: Plan) -> bool:
    """accelerate runs FSDP on GPUs only: on CPU the trainer runs under tests/fixtures/fsdp_on_cpu.py."""
    return plan.cpu and TRAINING[plan.strategy][0] == "fsdp"


def environment(plan: Plan, spec: Any, job_name: str) -> dict[str, str]:
    from trainer.spec import strategy

    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("ACCELERATE_", "TORCHELASTIC_", "FSDP_"))
           and k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    path = [str(ROOT)] + ([str(FIXTURES)] if fsdp_on_cpu(plan) else [])
    env |= strategy.process_env(spec) | {
        "KUBETUNE_JOB_NAME": job_name, "KUBETUNE_WORK_DIR": str(plan.workdir / "work"), "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join(path + [p for p in [env.get("PYTHONPATH")] if p]),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    }
    if plan.cpu:
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "kubetune-tests" / "torch_extensions"))
    return env


def launch(plan: Plan, job_name: str, log: Path, raw: dict[str, Any] | None = None) -> int:
    """One run of the job, as a pod starts it; returns the exit code, the log in `log`. `raw`: another job spec
    than the contract's (`job_spec(plan)`), run the same way (e.g. a preference job: tests/e2e/test_preference_ranks.py)."""
    from trainer.spec.job import JobSpec

    raw = raw or job_spec(plan)
    spec = JobSpec.model_validate(raw)
    (plan.workdir / "job.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    (plan.workdir / "accelerate.yaml").write_text(yaml.safe_dump(accelerate_config(plan, spec), sort_keys=False))
    module = "fsdp_on_cpu" if fsdp_on_cpu(plan) else "trainer.train"
    argv = [sys.executable, "-m", "trainer.train.supervise", "accelerate", "launch",
            "--config_file", str(plan.workdir / "accelerate.yaml"),
            "--num_machines", "1", "--num_processes", str(plan.processes), "--machine_rank", "0",
            "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()),
            "-m", module, "--spec", str(plan.workdir / "job.yaml")]
    with log.open("w") as out:
        try:
            done = subprocess.run(argv, cwd=plan.workdir, env=environment(plan, spec, job_name), stdout=out,
                                  stderr=subprocess.STDOUT, timeout=plan.timeout)
        except subprocess.TimeoutExpired:
            out.write(f"\n[contract] timed out after {plan.timeout}s\n")
            return 124
    return done.returncode


# -- the checks --------------------------------------------------------------------------------
def expected_adapter(plan: Plan) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of the adapter PEFT makes for this model and spec (on the meta device)."""
    import torch
    from peft import get_peft_model, get_peft_model_state_dict
    from transformers import AutoConfig, AutoModelForCausalLM

    from trainer.model.load import lora_config
    from trainer.spec.job import JobSpec

    spec = JobSpec.model_validate(job_spec(plan))
    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(plan.model))
    peft = get_peft_model(base, lora_config(spec))
    return {k: tuple(v.shape) for k, v in get_peft_model_state_dict(peft).items()}


def adapter_problems(adapter: Path, expected: dict[str, tuple[int, ...]]) -> tuple[int, list[str]]:
    """(tensors in the adapter, what is wrong with it)."""
    import torch
    from safetensors.torch import load_file

    path = adapter / "adapter_model.safetensors"
    if not path.exists():
        return 0, [f"no {path.name} in {adapter}"]
    got = load_file(path)
    problems = []
    if missing := sorted(set(expected) - set(got)):
        problems.append(f"{len(missing)} tensor(s) missing, e.g. {missing[0]}")
    if extra := sorted(set(got) - set(expected)):
        problems.append(f"{len(extra)} unexpected tensor(s), e.g. {extra[0]}")
    for name in sorted(set(got) & set(expected)):
        t = got[name]
        if tuple(t.shape) != expected[name]:
            problems.append(f"{name}: shape {tuple(t.shape)}, expected {expected[name]}")
        elif not torch.isfinite(t.float()).all():
            problems.append(f"{name}: not finite")
        elif "lora_B" in name and not t.abs().max() > 0:
            problems.append(f"{name}: all zero (untrained)")
    return len(got), problems


def eval_losses(plan: Plan, adapter: Path) -> tuple[float, float]:
    """(base + `adapter` loaded afresh, the base alone): the trainer's eval loss recomputed (trainer/train/loss.py: the
    mean over every evaluated label token of every rank), on the same rows in batches of the same size."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trainer.data import Collator, build_dataset
    from trainer.model.isolation import ensure_isolated
    from trainer.spec.job import JobSpec

    spec = JobSpec.model_validate(job_spec(plan))
    device = "cpu" if plan.cpu or not torch.cuda.is_available() else "cuda"
    tok = AutoTokenizer.from_pretrained(plan.model)
    rows, _ = build_dataset(spec, tok, "eval", base_dir=plan.workdir)
    base = AutoModelForCausalLM.from_pretrained(plan.model, dtype=getattr(torch, plan.dtype)).to(device)
    model = PeftModel.from_pretrained(base, adapter).eval()
    collate = Collator.for_spec(spec, tok)
    if spec.data.packing:  # as the trainer does: masks built from the position ids where the model builds none (gpt-oss)
        ensure_isolated(model, collate, vocab=len(tok), say=lambda line: None)

    def loss() -> float:
        total, tokens = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(rows), plan.batch):
                batch = {k: v.to(device) if hasattr(v, "to") else v
                         for k, v in collate(rows[i:i + plan.batch]).items()}
                n = int(batch["labels"][..., 1:].ne(-100).sum())  # the model's loss: mean over these (shifted)
                total += float(model(**batch).loss) * n
                tokens += n
        return total / tokens

    with_adapter = loss()
    with model.disable_adapter():
        alone = loss()
    return with_adapter, alone


def trainer_eval_loss(output: Path) -> float | None:
    from mlflow import MlflowClient

    marker = json.loads((output / "_SUCCESS").read_text())
    history = MlflowClient(tracking_uri=marker["tracking_uri"]).get_metric_history(marker["run_id"], "eval_loss")
    return sorted(history, key=lambda m: m.step)[-1].value if history else None


def relative_difference(a: Path, b: Path) -> float:
    """||a - b|| / ||a|| over all the adapter's tensors (inf when their names differ)."""
    from safetensors.torch import load_file

    x, y = load_file(a / "adapter_model.safetensors"), load_file(b / "adapter_model.safetensors")
    if set(x) != set(y):
        return math.inf
    diff = sum(float((x[k].double() - y[k].double()).pow(2).sum()) for k in x)
    norm = sum(float(x[k].double().pow(2).sum()) for k in x)
    return math.sqrt(diff / norm) if norm else math.inf


@dataclass
class Result:
    strategy: str
    where: str
    passed: bool = False
    steps: int | None = None
    final_loss: float | None = None
    tensors: int = 0
    expected_tensors: int = 0
    trainer_eval: float | None = None
    reload_eval: float | None = None
    base_eval: float | None = None
    resume_diff: float | None = None
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    log: str = ""


def tail(log: Path, lines: int = 40) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""


def run(plan: Plan) -> Result:
    """The whole contract for one strategy; `Result.problems` says what failed."""
    started = time.monotonic()
    where = f"{'cpu' if plan.cpu else 'gpu'} x{plan.processes}" + (" (fsdp_on_cpu)" if fsdp_on_cpu(plan) else "")
    result = Result(plan.strategy, where)
    shutil.rmtree(plan.workdir, ignore_errors=True)
    write_data(plan.workdir / "data", plan.n_train, plan.n_eval, takes_system_message(plan.model))
    if plan.strategy.startswith("zero") and importlib.util.find_spec("deepspeed") is None:
        result.problems.append("deepspeed is not installed")
        return result
    job_name = f"contract-{plan.strategy}-{os.getpid()}"
    output = plan.workdir / "out"
    log = plan.workdir / "train.log"
    code = launch(plan, job_name, log)
    result.log = str(log)
    if code != 0 or not (output / "_SUCCESS").exists():
        result.problems.append(f"training exited {code}:\n{tail(log)}")
        result.seconds = time.monotonic() - started
        return result
    marker = json.loads((output / "_SUCCESS").read_text())
    result.steps, result.final_loss = marker["steps"], marker["final_loss"]
    if result.steps != plan.steps:
        result.problems.append(f"trained {result.steps} steps, not {plan.steps}")
    expected = expected_adapter(plan)
    result.expected_tensors = len(expected)
    result.tensors, problems = adapter_problems(output / "adapter", expected)
    result.problems += problems
    if not problems:
        result.trainer_eval = trainer_eval_loss(output)
        result.reload_eval, result.base_eval = eval_losses(plan, output / "adapter")
        if result.trainer_eval is None:
            result.problems.append("the trainer logged no eval_loss")
        elif abs(result.reload_eval - result.trainer_eval) > plan.tolerance * max(1.0, abs(result.trainer_eval)):
            result.problems.append(f"reloaded adapter: eval loss {result.reload_eval:.6f}, the trainer's "
                                   f"{result.trainer_eval:.6f} (tolerance {plan.tolerance:g} relative)")
        if not result.reload_eval < result.base_eval - 0.01:
            result.problems.append(f"reloaded adapter: eval loss {result.reload_eval:.4f} is not below the base "
                                   f"model's {result.base_eval:.4f}: it learned nothing")
    if plan.resume and plan.save_steps and plan.save_steps < plan.steps and not result.problems:
        first = plan.workdir / "adapter-first-run"
        shutil.copytree(output / "adapter", first)
        log2 = plan.workdir / "resume.log"
        code = launch(plan, job_name, log2)
        text = log2.read_text(errors="replace")
        if code != 0 or not (output / "_SUCCESS").exists():
            result.problems.append(f"the resumed run exited {code}:\n{tail(log2)}")
        elif f"resuming job {job_name} from" not in text:
            result.problems.append("the job started again did not resume from its checkpoint:\n" + tail(log2, 15))
        else:
            result.resume_diff = relative_difference(first, output / "adapter")
            if result.resume_diff > plan.resume_tolerance:
                result.problems.append(f"the resumed run's adapter differs from the first run's by "
                                       f"{result.resume_diff:.2g} (relative; tolerance {plan.resume_tolerance:g})")
    result.passed = not result.problems
    result.seconds = time.monotonic() - started
    return result


def fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table(results: list[Result]) -> str:
    head = ["strategy", "where", "steps", "final loss", "adapter tensors", "trainer eval", "reload eval",
            "base eval", "resume diff", "s", "result"]
    rows = [[r.strategy, r.where, str(r.steps if r.steps is not None else "-"), fmt(r.final_loss),
             f"{r.tensors}/{r.expected_tensors}", fmt(r.trainer_eval), fmt(r.reload_eval), fmt(r.base_eval),
             "-" if r.resume_diff is None else f"{r.resume_diff:.1e}", f"{r.seconds:.0f}",
             "PASS" if r.passed else "FAIL"] for r in results]
    widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [head, *rows]]
    for r in results:
        for p in r.problems:
            lines.append(f"{r.strategy}: {p}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.strategy_contract", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build-model", help="build a random Qwen2 model from a config")
    b.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    b.add_argument("--dtype", default="float32")
    b.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run", help="run the contract for one strategy; writes WORKDIR/result.json")
    r.add_argument("--strategy", choices=STRATEGIES, required=True)
    r.add_argument("--model", type=Path, required=True)
    r.add_argument("--workdir", type=Path, required=True)
    r.add_argument("--cpu", action="store_true", help="resources.gpu none (gloo; DeepSpeed with DS_ACCELERATOR=cpu)")
    r.add_argument("--processes", type=int, default=1)
    r.add_argument("--steps", type=int, default=10)
    r.add_argument("--save-steps", type=int, default=5)
    r.add_argument("--batch", type=int, default=2)
    r.add_argument("--max-seq-len", type=int, default=256)
    r.add_argument("--learning-rate", type=float, default=3e-3)
    r.add_argument("--gradient-checkpointing", action="store_true")
    r.add_argument("--resume", action="store_true", help="also start the job again and check it resumes")
    r.add_argument("--timeout", type=int, default=900)
    t = sub.add_parser("table", help="print the results of earlier runs: FOLDER/STRATEGY/result.json")
    t.add_argument("folder", type=Path)
    t.add_argument("strategies", nargs="+", help="the strategies run (one without a result is a FAIL)")
    args = p.parse_args(argv)
    if args.command == "build-model":
        build_model(args.out, args.shape, args.dtype)
        print(f"wrote a random {args.shape} Qwen2 model to {args.out}")
        return 0
    if args.command == "run":
        plan = Plan(args.strategy, args.model.resolve(), args.workdir.resolve(), cpu=args.cpu,
                    processes=args.processes, steps=args.steps, save_steps=args.save_steps, batch=args.batch,
                    max_seq_len=args.max_seq_len, learning_rate=args.learning_rate,
                    gradient_checkpointing=args.gradient_checkpointing, resume=args.resume, timeout=args.timeout)
        result = run(plan)
        plan.workdir.mkdir(parents=True, exist_ok=True)
        (plan.workdir / "result.json").write_text(json.dumps(asdict(result), indent=2))
        print(table([result]))
        return 0 if result.passed else 1
    results = []
    for name in args.strategies:
        path = args.folder / name / "result.json"
        results.append(Result(**json.loads(path.read_text())) if path.exists() else Result(
            name, "-", problems=[f"no result: the run crashed or timed out (its output: {args.folder / name}.out)"]))
    print(table(results))
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
