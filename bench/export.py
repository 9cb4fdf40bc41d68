"""Export wall time against llama.cpp's tools run by hand, and next-token agreement per GGUF type.

    python bench/export.py                      # tiny random Llama, f16 + q8_0 + q6_k + q4_k_m
    python bench/export.py --arch qwen2 --types f16 q8_0 q4_k_m --golden 16

  by-hand   `python convert_hf_to_gguf.py MODEL --outtype f16` of the pinned tree (its own gguf-py),
            then one `llama_model_quantize` per quantized type, straight from the f16 file
  ours      trainer.export.gguf.convert + quantize on the same model (the export job's steps)

Each quantized type is also made with an importance matrix computed from the model's training
conversations (export.imatrix), shown as `<type>+imatrix`. Target: ours / by-hand <= 1.2. Agreement is the gate's measure (trainer/export/verify.py): top-1
agreement and mean KL of llama.cpp's next-token distribution against the HF model's, at every
position of held-out chat conversations (target: q8_0 top-1 >= 99%). The tiny random model
(tests.models) first gets a LoRA trained for `--train-steps` on other conversations of the same
pattern and merged: a random model's next-token distributions are nearly flat, so its top-1 flips
on any rounding and says nothing about a real export (`--train-steps 0` shows that floor).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def by_hand(model: Path, out: Path, types: list[str]) -> float:
    import llama_cpp

    from trainer.export.gguf import llama_cpp_dir
    from trainer.spec.quants import QUANTS

    tree = llama_cpp_dir()
    started = time.perf_counter()
    f16 = out / "hand-f16.gguf"
    subprocess.run([sys.executable, str(tree / "convert_hf_to_gguf.py"), str(model), "--outtype", "f16",
                    "--outfile", str(f16)], check=True, capture_output=True, cwd=tree)
    for q in types:
        if QUANTS[q].step == "quantize":
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, QUANTS[q].ftype)
            params.nthread = os.cpu_count() or 1
            assert llama_cpp.llama_model_quantize(str(f16).encode(), str(out / f"hand-{q}.gguf").encode(),
                                                  ctypes.byref(params)) == 0
    return time.perf_counter() - started


def ours(model: Path, out: Path, types: list[str]) -> tuple[float, dict[str, Path]]:
    from trainer.export import gguf
    from trainer.spec.quants import QUANTS

    started = time.perf_counter()
    f16 = gguf.convert(model, out / "ours-f16.gguf", "f16", out / "convert.log").path
    files = {"f16": f16}
    for q in types:
        if QUANTS[q].step == "quantize":
            files[q] = gguf.quantize(f16, out / f"ours-{q}.gguf", q).path
    return time.perf_counter() - started, files


def trained_model(base: Path, out: Path, steps: int) -> Path:
    """`base` with a LoRA trained `steps` steps on chat rows and merged (the base itself for 0)."""
    import shutil

    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.models import chat_rows

    if steps == 0:
        return base
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(base)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM"))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    batch = [torch.tensor([tok(tok.apply_chat_template(r["messages"], tokenize=False), add_special_tokens=False)
                           .input_ids]) for r in chat_rows(8, seed=100)]
    for _ in range(steps):
        loss = sum(model(ids, labels=ids).loss for ids in batch) / len(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.merge_and_unload().save_pretrained(out)
    tok.save_pretrained(out)
    for extra in ("tokenizer.model",):
        if (base / extra).exists():
            shutil.copy2(base / extra, out / extra)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="llama", choices=["llama", "qwen2", "phi3"])
    ap.add_argument("--types", nargs="+", default=["f16", "q8_0", "q6_k", "q4_k_m"])
    ap.add_argument("--golden", type=int, default=8, help="chat conversations to compare on")
    ap.add_argument("--train-steps", type=int, default=20, help="LoRA steps before export (0: the random model)")
    ap.add_argument("--no-imatrix", dest="imatrix", action="store_false",
                    help="skip the quantizations weighted by an importance matrix (export.imatrix)")
    args = ap.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.models import chat_rows, tiny_model
    from trainer.data.render import end_of_turn
    from trainer.export import gguf, imatrix, verify
    from trainer.spec.quants import QUANTS

    base = tiny_model(args.arch)  # Phi-3 comes with the tokenizer.model llama.cpp's converter reads
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        model_dir = trained_model(base, out / "model", args.train_steps)
        hand = by_hand(model_dir, out, args.types)
        mine, files = ours(model_dir, out, args.types)
        print(f"{args.arch}: convert f16 + quantize {', '.join(t for t in args.types if t != 'f16')}")
        print(f"  by-hand {hand:7.1f}s\n  ours    {mine:7.1f}s   ratio {mine / hand:.2f} (target <= 1.2)")

        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        golden = verify.reference(model, tok, [r["messages"] for r in chat_rows(args.golden, seed=11)])
        eos = [t for t in (tok.eos_token, end_of_turn(tok)) if t]
        rows = [tok(tok.apply_chat_template(r["messages"], tokenize=False), add_special_tokens=False).input_ids
                for r in chat_rows(32, seed=100)]  # the training conversations, as export.imatrix uses them
        started = time.perf_counter()
        weights, _ = imatrix.compute(model, rows, files["f16"], "bench: training conversations")
        weighted = {f"{q}+imatrix": gguf.quantize(files["f16"], out / f"ours-{q}-imatrix.gguf", q,
                                                  imatrix=weights).path
                    for q in args.types if QUANTS[q].step == "quantize"} if args.imatrix else {}
        if weighted:
            print(f"  importance matrix on 32 training conversations and its quantizations: "
                  f"{time.perf_counter() - started:.1f}s")
        print(f"\nagreement with the HF model on {args.golden} conversations ({sum(map(len, golden.ids))} positions)")
        print(f"  {'type':16} {'top-1':>8} {'mean KL':>10} {'size MiB':>9}  gate")
        for name, path in {**{q: files[q] for q in args.types}, **weighted}.items():
            q = name.split("+")[0]
            r = verify.verify_file(path, q, tok, eos, golden, QUANTS[q].min_top1, QUANTS[q].max_kl)
            print(f"  {name:16} {r.top1:>8.2%} {r.kl:>10.5f} {path.stat().st_size / 2**20:>9.1f}  "
                  + ("pass" if r.passed else "FAIL: " + "; ".join(c.name for c in r.failures())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
