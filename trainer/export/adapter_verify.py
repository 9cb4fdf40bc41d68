"""The adapter gate: a LoRA GGUF is registered only when llama.cpp, applying it at load over its base GGUF,
runs like the HF base with the PEFT adapter (un-merged).

The checks are the merged gate's (trainer/export/verify.py), on the same golden conversations: tokenization,
top-1 agreement and mean KL(HF || llama.cpp) at every position, the chat template embedded in the base GGUF,
and the stop tokens. The reference is the HF base with the adapter active (`references`).

The floor. A quantized base GGUF differs from the HF base by itself, before any adapter. So the base GGUF alone
is measured against the HF base alone on the same conversations (`verify_adapter(base, None, golden_base, ...)`):
that report is the floor, and with a floor the adapter is judged by what it adds:

- the floor itself must pass the quant's thresholds (top-1 >= min_top1, KL <= max_kl), as the merged gate would:
  the base GGUF is a faithful quantization of THIS base. A base GGUF of another model (an adapter paired with the
  wrong base) fails here, however close the adapter run stays to its (equally wrong) floor;
- base + adapter may lose at most the quant's own budget beyond the floor: top-1 >= floor top-1 - (1 - min_top1)
  and KL <= floor KL + max_kl. An adapter applied right reproduces roughly the floor (the LoRA is applied in 16-bit
  on top of the quantized weights), well inside the budget; a missing or wrong adapter moves the distributions by
  as much as the adapter changes them, which a trained adapter does far beyond a quant's budget.

Without a floor (a float base: f32, f16, bf16, whose own error is negligible) the thresholds are absolute, as
in the merged gate. The report's `min_top1` / `max_kl` are the thresholds that were applied.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from trainer.export import verify
from trainer.export.verify import Check, FileReport, Golden, Message


class Thresholds(Protocol):  # trainer/spec/export.py GateSpec
    min_top1: float
    max_kl: float


@dataclass(frozen=True)
class _Gate:
    min_top1: float
    max_kl: float


def references(adapted: Any, tokenizer: Any, conversations: list[list[Message]]) -> tuple[Golden, Golden]:
    """(HF base + adapter, HF base alone) golden distributions from one PeftModel (its adapter disabled for the
    second): the adapter gate's reference and its floor's."""
    with_adapter = verify.reference(adapted, tokenizer, conversations)
    with adapted.disable_adapter():
        base = verify.reference(adapted, tokenizer, conversations)
    return with_adapter, base


def gguf_quant(llm: Any) -> str:
    """The GGUF type of a loaded file (its `general.file_type`), as named in trainer/spec/quants.py."""
    import llama_cpp

    from trainer.spec.quants import QUANTS

    ftype = int(llm.metadata.get("general.file_type", -1))
    by_ftype = {int(getattr(llama_cpp, q.ftype)): q.name for q in QUANTS.values()}
    return by_ftype.get(ftype, f"ftype{ftype}")


def judge(top1: float, kl: float, positions: int, gate: Thresholds, floor: FileReport | None) -> tuple[_Gate, list[Check]]:
    """The top-1 and KL checks (and the floor's), as the module docstring states; returns the applied thresholds."""
    if floor is None:
        applied = _Gate(gate.min_top1, gate.max_kl)
        checks = []
    else:
        f_top1, f_kl = floor.top1 if floor.top1 is not None else 0.0, floor.kl if floor.kl is not None else np.inf
        applied = _Gate(f_top1 - (1.0 - gate.min_top1), f_kl + gate.max_kl)
        ok = f_top1 >= gate.min_top1 and f_kl <= gate.max_kl and floor.positions == positions
        checks = [Check("floor", bool(ok),
                        f"the base GGUF alone vs the HF base: top-1 {f_top1:.2%} (need >= {gate.min_top1:.0%}), KL "
                        f"{f_kl:.5f} (need <= {gate.max_kl}) on {floor.positions} positions ({positions} here)"
                        + ("" if ok else ": the base GGUF is not a faithful quantization of this adapter's base "
                           "(another model, or a quantization too coarse for it)"))]
    finite = bool(np.isfinite(kl))
    checks.append(Check("top1", top1 >= applied.min_top1,
                        f"top-1 agreement {top1:.2%} (need >= {applied.min_top1:.2%})"))
    checks.append(Check("kl", finite and kl <= applied.max_kl,
                        f"mean KL {kl:.5f} nats (need <= {applied.max_kl:.5f})"))
    return applied, checks


def verify_adapter(base_gguf: Path, adapter_gguf: Path | None, golden: Golden, tokenizer: Any, eos: list[str],
                   thresholds: Thresholds | None = None, floor: FileReport | None = None,
                   quant: str | None = None) -> FileReport:
    """Gate `adapter_gguf` applied by llama.cpp over `base_gguf` against `golden` (HF base + adapter, `references`).

    `thresholds`: the gate of the base's GGUF type (`export.verify.gate(quant)`; default: trainer/spec/quants.py's);
    `floor`: the base GGUF's own report against the HF base (this function with `adapter_gguf=None` and the base's
    golden), for a quantized base; `quant`: the base's GGUF type (default: read from the file)."""
    name = base_gguf.name + (f" + {adapter_gguf.name}" if adapter_gguf is not None else "")
    report = FileReport(quant or "?", name)
    n_ctx = max(len(s) for s in golden.ids) + 16
    try:
        llm = verify.load(base_gguf, n_ctx, lora=adapter_gguf)
    except (ValueError, RuntimeError, OSError) as e:
        report.checks.append(Check("load", False, f"llama.cpp cannot load the base with this adapter: {e}"))
        return report
    try:
        report.quant = quant or gguf_quant(llm)
        gate = thresholds or _default_gate(report.quant)
        report.checks.append(verify.tokenization(llm, tokenizer, golden))
        report.top1, report.kl, report.positions = verify.distribution(llm, golden)
        applied, checks = judge(report.top1, report.kl, report.positions, gate, floor)
        report.min_top1, report.max_kl = applied.min_top1, applied.max_kl
        report.checks += checks
        report.checks.append(verify.template(llm, tokenizer, golden))
        report.checks.append(verify.stopping(llm, tokenizer, eos))
    finally:
        llm.close()
    return report


def _default_gate(quant: str) -> Thresholds:
    from trainer.spec.quants import QUANTS

    if quant not in QUANTS:
        raise ValueError(f"the base GGUF's type {quant} is not one kubetune exports: pass `quant` and `thresholds`")
    return _Gate(QUANTS[quant].min_top1, QUANTS[quant].max_kl)
