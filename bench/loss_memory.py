"""Peak memory and step time of the LM head + loss: full logits vs `training.loss: chunked` (trainer/train/head.py).

    .venv/bin/python bench/loss_memory.py [--rows 2 --seq 512 --trained 0.35 --repeats 1]

A tiny Gemma 3 (Gemma3ForCausalLM, 2 layers, hidden 256, LoRA r16 on q/k/v/o, float32 on CPU) with Gemma 3's real
vocabulary size (262,144: the Gemma 3 270M GGUF's, read through tests/resources.py when `make setup` has run), and a
packed completions-only batch: each row packs samples of 64-383 tokens whose last `--trained` share is the completion.
Each variant runs in its own process: forward + loss + backward of the same batch, `--repeats` times (the full
step takes about half a minute on 2 cores at the defaults). Peak memory: the process's resident-set high-water mark (VmHWM in /proc/self/status, reset by writing 5 to
/proc/self/clear_refs just before the step) minus its resident set then, so it is what the step adds on top of the
model; step time: the median. Target (issue 16): chunked peak <= 1/8 of full.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GEMMA3_VOCAB = 262144


def vocab_size() -> tuple[int, str]:
    try:
        from tests.resources import tokenizer_for

        return len(tokenizer_for("gemma3")), "the real Gemma 3 tokenizer (tests/resources.py)"
    except Exception as e:  # noqa: BLE001 - a bench without `make setup` still runs at the real size
        return GEMMA3_VOCAB, f"Gemma 3's vocabulary size (tokenizer unavailable: {type(e).__name__})"


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def make_batch(rows: int, seq: int, trained: float, vocab: int) -> dict:
    import torch

    from trainer.data.collator import Collator

    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(rows):
        ids, labels, pos = [], [], []
        while len(ids) < seq:
            n = min(int(torch.randint(64, 384, (1,), generator=g)), seq - len(ids))
            i = torch.randint(3, vocab, (n,), generator=g).tolist()
            k = n - max(1, int(n * trained))
            ids, labels, pos = ids + i, labels + [-100] * k + i[k:], pos + list(range(n))
        items.append({"input_ids": ids, "labels": labels, "position_ids": pos})
    return Collator(type("Pad", (), {"pad_token_id": 0, "eos_token_id": 1})(), packing=True)(items)


def child(kind: str, rows: int, seq: int, trained: float, repeats: int, vocab: int) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    from trainer.train.head import choose
    from trainer.train.loss import TokenMeanLoss

    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=64, query_pre_attn_scalar=64,
                              sliding_window=512, layer_types=["sliding_attention", "full_attention"],
                              max_position_embeddings=4096, final_logit_softcapping=30.0)
    model = get_peft_model(AutoModelForCausalLM.from_config(config).float(),
                           LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    batch = make_batch(rows, seq, trained, vocab)
    labels = batch.pop("labels")
    head = choose(kind, model, sharded=None, say=print) if kind != "full" else None
    loss_fn = TokenMeanLoss(head)

    def step() -> float:
        model.zero_grad(set_to_none=True)
        if head is None:
            loss = loss_fn(model(**batch), labels)
        else:
            with head.capture():
                loss = loss_fn(model(**batch, logits_to_keep=1), labels)
        loss.backward()
        return float(loss)

    times, peaks = [], []
    for _ in range(repeats):
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        before = rss_kib("VmRSS")
        started = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - started)
        peaks.append(rss_kib("VmHWM") - before)
    return {"kind": kind, "loss": loss, "peak_mib": max(peaks) / 1024, "step_s": statistics.median(times),
            "trained": int((labels[:, 1:] != -100).sum()), "tokens": int(labels.numel())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--trained", type=float, default=0.35, help="share of each sample that is the completion")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--vocab", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(child(a.child, a.rows, a.seq, a.trained, a.repeats, a.vocab)))
        return
    vocab, where = vocab_size()
    from trainer.train.head import rows_per_chunk

    print(f"settings: Gemma3ForCausalLM 2 layers, hidden 256, vocab {vocab:,} ({where}), final_logit_softcapping 30, "
          f"LoRA r16 q/k/v/o, float32, CPU; batch {a.rows} packed rows x {a.seq} tokens, completions-only "
          f"({a.trained:.0%} of each sample); chunk {rows_per_chunk(vocab)} rows; median of {a.repeats} step(s); peak = VmHWM - VmRSS around the step (forward + loss + backward), each variant in its own process")
    results = {}
    for kind in ("full", "chunked"):
        cmd = [sys.executable, __file__, "--child", kind, "--rows", str(a.rows), "--seq", str(a.seq), "--trained",
               str(a.trained), "--repeats", str(a.repeats), "--vocab", str(vocab)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        results[kind] = json.loads(out.strip().splitlines()[-1])
        r = results[kind]
        print(f"{kind:8s} loss {r['loss']:.5f}  peak {r['peak_mib']:8.1f} MiB  step {r['step_s']:6.2f} s  "
              f"({r['trained']} trained of {r['tokens']} tokens)")
    full, chunked = results["full"], results["chunked"]
    ratio = full["peak_mib"] / max(chunked["peak_mib"], 1e-9)
    same = abs(full["loss"] - chunked["loss"]) <= 1e-4 * abs(full["loss"])
    print(f"peak full / chunked: {ratio:.1f}x; step time full / chunked: {full['step_s'] / chunked['step_s']:.2f}x; "
          f"same loss: {'yes' if same else 'NO'}")
    print(f"target chunked peak <= 1/8 of full: {'met' if ratio >= 8 and same else 'NOT met'}")


if __name__ == "__main__":
    main()
