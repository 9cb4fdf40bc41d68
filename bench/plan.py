"""Predicted against measured peak memory of a LoRA training step, for tiny models on CPU.

    python bench/plan.py              # about a minute on 2 idle CPU cores
    python bench/plan.py --only llama # the configurations whose name contains "llama"

The prediction is `launch plan`'s own code (launcher/plan/memory.py) for the same spec, in its CPU
mode (float32, no CUDA terms). Each configuration builds a tiny random model of a real architecture
from a config in code, wraps it with the trainer's own `trainer.model.load.add_adapter` (the PEFT LoRA /
DoRA the cluster job gets, checkpointing included), and trains float32 AdamW steps on packed rows
(two samples per row, position ids restarting, as the collator builds them).

What "measured" is. The peak of the third step (adapter, gradients and optimizer state all exist
by then), in bytes of live tensors: the tensors alive before the step (parameters and AdamW
state, summed from the objects) plus the highest point of torch.profiler's memory timeline for
the step (`profile_memory=True`: every CPU tensor allocation and free, in order). That is what
`torch.cuda.max_memory_allocated` reports on a GPU: what the estimate models before its CUDA
context and allocator-slack terms, which a CPU process does not have. The other options:
  - tracemalloc sees only Python's own allocator; torch allocates tensors in C++, invisible to it.
  - peak RSS (VmHWM, reset through /proc/self/clear_refs before the step) counts pages, not
    tensors: glibc keeps the pages the first steps freed and hands them out again, so a step
    holding 75-415 MiB of live tensors raised the RSS by only 20-120 MiB when tried here.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB = 4096


@dataclass
class Case:
    name: str
    arch: str  # llama | qwen2 | gemma3 | phi3
    seq: int = 512
    batch: int = 2
    r: int = 16
    method: str = "lora"
    checkpointing: bool = False
    dropout: float = 0.05
    targets: Any = "all-linear"
    shape: dict[str, int] = field(default_factory=dict)


CASES = [
    Case("llama r16", "llama"),
    Case("llama r64", "llama", r=64),
    Case("llama r16 seq1024", "llama", seq=1024),
    Case("llama r16 ckpt", "llama", checkpointing=True),
    Case("llama r16 seq1024 ckpt", "llama", seq=1024, checkpointing=True),
    Case("llama r16 seq2048 batch1", "llama", seq=2048, batch=1),
    Case("llama dora r16", "llama", method="dora"),
    Case("llama r16 no dropout", "llama", dropout=0.0),
    Case("llama r8 q,v", "llama", r=8, targets=["q_proj", "v_proj"]),
    Case("qwen2 r16", "qwen2"),
    Case("gemma3 r16", "gemma3"),
    Case("gemma3 r16 ckpt", "gemma3", checkpointing=True),
    Case("phi3 r16", "phi3"),
]
SHAPE = {"hidden_size": 256, "intermediate_size": 768, "num_hidden_layers": 4, "num_attention_heads": 4}


def model_config(case: Case) -> Any:
    from transformers import Gemma3TextConfig, LlamaConfig, Phi3Config, Qwen2Config

    common = {**SHAPE, **case.shape, "vocab_size": VOCAB, "max_position_embeddings": 4096}
    if case.arch == "llama":
        return LlamaConfig(**common, num_key_value_heads=2, tie_word_embeddings=False)
    if case.arch == "qwen2":
        return Qwen2Config(**common, num_key_value_heads=2, tie_word_embeddings=True)
    if case.arch == "gemma3":
        layers = common["num_hidden_layers"]
        return Gemma3TextConfig(**common, num_key_value_heads=1, head_dim=64, query_pre_attn_scalar=64,
                                sliding_window=128, layer_types=["sliding_attention", "full_attention"] * (layers // 2))
    return Phi3Config(**common, num_key_value_heads=4, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)


def job_spec(case: Case) -> Any:
    from trainer.spec.io import spec_from_dict

    return spec_from_dict({
        "name": "bench-plan", "base_model": "bench/tiny", "data": {"train": "unused.jsonl", "max_seq_len": case.seq},
        "model": {"dtype": "float32", "attn_implementation": "sdpa"},
        "adapter": {"method": case.method, "r": case.r, "alpha": 2 * case.r, "dropout": case.dropout,
                    "target_modules": case.targets},
        "training": {"per_device_batch_size": case.batch, "gradient_checkpointing": case.checkpointing},
        "resources": {"gpu": "none"},
    }, source="bench")


def predicted(case: Case, config: Any) -> int:
    from launcher.plan.arch import from_hf_config
    from launcher.plan.memory import Setup, estimate

    arch = from_hf_config(config.to_dict(), source=case.arch)
    return estimate(arch, Setup.from_spec(job_spec(case))).total


def batch_for(case: Case, seed: int) -> dict[str, Any]:
    """Packed rows as the collator builds them: two samples per row, position ids restarting."""
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (case.batch, case.seq), generator=g)
    half = case.seq // 2
    positions = torch.cat([torch.arange(half), torch.arange(case.seq - half)]).repeat(case.batch, 1)
    return {"input_ids": ids, "labels": ids.clone(), "position_ids": positions, "use_cache": False}


def live_bytes(model: Any, optimizer: Any) -> int:
    tensors = {id(p): p for p in model.parameters()}
    for state in optimizer.state.values():
        tensors |= {id(t): t for t in state.values() if hasattr(t, "untyped_storage")}
    return sum(t.numel() * t.element_size() for t in tensors.values())


def measure(case: Case, config: Any, steps: int = 3) -> int:
    """Peak bytes of live tensors during the last of `steps` training steps."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action
    from transformers import AutoModelForCausalLM

    from trainer.model.load import BaseModelRef, add_adapter

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="sdpa")
    model = add_adapter(base, job_spec(case), BaseModelRef("bench/tiny"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(seed: int) -> None:
        loss = model(**batch_for(case, seed)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for s in range(steps - 1):
        step(s)
    before = live_bytes(model, optimizer)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        step(steps)
    current = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            current += size
        elif action == Action.DESTROY:
            current -= size
        peak = max(peak, current)
    return before + peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="run only the configurations whose name contains this")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    rows = []
    started = time.perf_counter()
    print(f"{'configuration':26s} {'predicted':>10s} {'measured':>10s} {'predicted/measured':>19s}")
    for case in [c for c in CASES if args.only in c.name]:
        config = model_config(case)
        pred = predicted(case, config)
        peak = measure(case, config)
        rows.append(pred / peak)
        print(f"{case.name:26s} {pred / 2**20:8.1f}Mi {peak / 2**20:8.1f}Mi {pred / peak:19.2f}", flush=True)
    if rows:
        print(f"\npredicted / measured: min {min(rows):.2f}, max {max(rows):.2f} over {len(rows)} configurations "
              f"({time.perf_counter() - started:.0f}s)")


if __name__ == "__main__":
    main()
