"""Seed 004's out-of-memory protocol as concrete `--set` overrides, and auto-fit.

The rungs, in order: shorter sequences -> lower rank -> no DoRA -> fewer target modules -> QLoRA
(4bit) -> ZeRO-3 -> more GPUs. Each rung is computed on top of the rungs before it and carries the
estimate it reaches; a rung that would not lower the estimate (QLoRA cannot shrink experts stored as
3-D parameters, for example) is listed as no gain and not carried forward. A rung whose spec
`trainer.spec.strategy.check` would refuse (ZeRO-3 on top of QLoRA or DoRA: not proven, see
docs/cluster.md), or the spec itself would refuse, is not offered. Auto-fit applies the rungs in order until the estimate fits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from launcher.plan.arch import Architecture
from launcher.plan.memory import estimate
from launcher.plan.setup import Setup
from trainer.spec import strategy
from trainer.spec.io import SpecError, apply_overrides, spec_from_dict
from trainer.spec.job import JobSpec

MIN_SEQ_LEN = 512
MIN_RANK = 8
MAX_NODES = 16


@dataclass(frozen=True)
class Rung:
    label: str
    overrides: tuple[str, ...]  # `--set` arguments, cumulative within this rung only
    total: int  # estimated bytes per GPU with this rung and every useful rung before it
    fits: bool
    helps: bool  # lowered the estimate (otherwise not applied)
    spec: JobSpec  # the spec with every useful rung up to this one


def with_overrides(spec: JobSpec, overrides: list[str] | tuple[str, ...]) -> JobSpec:
    data, problems = apply_overrides(spec.model_dump(mode="json"), overrides)
    if problems:
        raise SpecError("auto-fit", problems)
    return spec_from_dict(data, source="auto-fit")


def _shorter(spec: JobSpec, arch: Architecture) -> tuple[str, ...]:
    n = spec.data.max_seq_len
    return (f"data.max_seq_len={max(MIN_SEQ_LEN, n // 2)}",) if n > MIN_SEQ_LEN else ()


def _rank(spec: JobSpec, arch: Architecture) -> tuple[str, ...]:
    a = spec.adapter
    if a.r <= MIN_RANK:
        return ()
    r = max(MIN_RANK, a.r // 2)
    return (f"adapter.r={r}", f"adapter.alpha={max(1, round(a.alpha * r / a.r))}")  # same alpha / r scaling


def _no_dora(spec: JobSpec, arch: Architecture) -> tuple[str, ...]:
    return ("adapter.method=lora",) if spec.adapter.method == "dora" else ()


def _fewer_targets(spec: JobSpec, arch: Architecture) -> tuple[str, ...]:
    current = {lin.name for lin in arch.targets(spec.adapter.target_modules)}
    attention = arch.attention_targets()
    fewer = attention if not current <= set(attention) else [n for n in attention if n in ("q_proj", "v_proj")]
    if not fewer or set(fewer) >= current:
        return ()
    return (f"adapter.target_modules=[{','.join(fewer)}]",)


def _qlora(spec: JobSpec, arch: Architecture) -> tuple[str, ...]:
    if spec.model.quantization == "4bit" or spec.base_model.lower().endswith(".gguf") or spec.adapter.init == "pissa":
        return ()  # a GGUF is de-quantized on load; PiSSA needs unquantized weights (trainer/model/load.py)
    return ("model.quantization=4bit",)


def _zero3(spec: JobSpec, arch: Architecture) -> tuple[str, ...]:
    if spec.training.strategy in ("zero3", "fsdp") or spec.adapter.init == "pissa":
        return ()
    return ("training.strategy=zero3",)


RUNGS: list[tuple[str, Callable[[JobSpec, Architecture], tuple[str, ...]]]] = [
    ("shorter sequences", _shorter),
    ("lower rank", _rank),
    ("no DoRA", _no_dora),
    ("fewer target modules", _fewer_targets),
    ("QLoRA (4bit)", _qlora),
    ("ZeRO-3", _zero3),
]


def _more_gpus(spec: JobSpec, arch: Architecture, capacity: int) -> tuple[tuple[str, ...], int] | None:
    """The fewest GPUs (8 per node, then more nodes) at which the estimate fits; else the most tried."""
    res = spec.resources
    layouts = [(g, 1) for g in (2, 4, 8) if g > res.gpus_per_node and res.nodes == 1]
    layouts += [(max(8, res.gpus_per_node), n) for n in (2, 4, 8, 16, 32, MAX_NODES) if n > res.nodes]
    best = None
    for per_node, nodes in layouts:
        total = estimate(arch, Setup.from_spec(spec).with_(world_size=per_node * nodes)).total
        overrides = tuple(o for o, changed in ((f"resources.gpus_per_node={per_node}", per_node != res.gpus_per_node),
                                                (f"resources.nodes={nodes}", nodes != res.nodes)) if changed)
        best = (overrides, total)
        if total <= capacity:
            break
    return best


def _pays_off_over_more_gpus(candidate: JobSpec, current: JobSpec, arch: Architecture, capacity: int) -> bool:
    """A change of strategy that saves nothing on the GPUs the job has (ZeRO-3 on one GPU shards nothing) but
    lowers what the more-GPUs rung reaches."""
    if candidate.training.strategy == current.training.strategy:
        return False
    with_it, without = _more_gpus(candidate, arch, capacity), _more_gpus(current, arch, capacity)
    return with_it is not None and (without is None or with_it[1] < without[1])


def climb(spec: JobSpec, arch: Architecture, capacity: int) -> list[Rung]:
    """Every applicable rung, cumulative, with the estimate each reaches."""
    rungs: list[Rung] = []
    current = spec
    total = estimate(arch, Setup.from_spec(spec)).total
    for label, step in RUNGS:
        overrides = step(current, arch)
        if not overrides:
            continue
        try:
            candidate = with_overrides(current, overrides)
        except SpecError:
            continue  # a combination the spec refuses
        if strategy.check(candidate) and not strategy.check(current):
            continue  # a combination the job would be refused with
        new_total = estimate(arch, Setup.from_spec(candidate)).total
        helps = new_total < total or _pays_off_over_more_gpus(candidate, current, arch, capacity)
        rungs.append(Rung(label, overrides, min(new_total, total) if helps else total,
                          helps and new_total <= capacity, helps, candidate if helps else current))
        if helps:
            current, total = candidate, min(new_total, total)
    more = _more_gpus(current, arch, capacity)
    if more is not None:
        overrides, new_total = more
        candidate = with_overrides(current, overrides)
        helps = new_total < total
        rungs.append(Rung("more GPUs", overrides, new_total if helps else total, helps and new_total <= capacity,
                          helps, candidate if helps else current))
    return rungs


def auto_fit(rungs: list[Rung]) -> list[Rung] | None:
    """The useful rungs up to the first that fits (what auto-fit applies), or None when none fits."""
    applied: list[Rung] = []
    for rung in rungs:
        if rung.helps:
            applied.append(rung)
            if rung.fits:
                return applied
    return None
