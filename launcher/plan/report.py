"""`launch plan`'s output: the breakdown, the fit per GPU type and count, and the ladder (table or JSON)."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from launcher.plan import objective
from launcher.plan.arch import Architecture
from launcher.plan.fit import GPUS, Gpu, Row, deciding_gpu, table
from launcher.plan.ladder import Rung, auto_fit, climb
from launcher.plan.memory import Estimate, GiB, estimate
from launcher.plan.setup import Setup
from trainer.spec.job import JobSpec


def gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB" if abs(n) >= 0.1 * GiB else f"{n / 2**20:.0f} MiB"


def sets(overrides: tuple[str, ...] | list[str]) -> str:
    """`--set` arguments as a shell takes them (quoted where brackets or spaces need it)."""
    return " ".join(f"--set {shlex.quote(o)}" for o in overrides)


def params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


@dataclass
class Plan:
    spec: JobSpec
    arch: Architecture
    setup: Setup
    estimate: Estimate
    rows: list[Row]
    gpu: Gpu | None  # the GPU that decides (None for a CPU job)
    ladder: list[Rung]

    @property
    def fits(self) -> bool:
        return self.gpu is None or self.estimate.total <= self.gpu.capacity

    @property
    def auto_fit(self) -> list[Rung] | None:
        return auto_fit(self.ladder)


def make(spec: JobSpec, arch: Architecture) -> Plan:
    setup = Setup.from_spec(spec)
    est = estimate(arch, setup)
    if spec.resources.gpu == "none":
        return Plan(spec, arch, setup, est, [], None, [])
    gpu = deciding_gpu(spec.resources.gpu)
    ladder = [] if est.total <= gpu.capacity else climb(spec, arch, gpu.capacity)
    return Plan(spec, arch, setup, est, table(arch, setup), gpu, ladder)


def describe(plan: Plan) -> list[str]:
    s, arch, spec = plan.setup, plan.arch, plan.spec
    targets = s.target_modules if isinstance(s.target_modules, str) else "[" + ", ".join(s.target_modules) + "]"
    if s.target_parameters:
        targets += " + parameters [" + ", ".join(s.target_parameters) + "]"
    quant = "" if s.quantization == "none" else f", {s.quantization} base (QLoRA)"
    where = "CPU process" if s.device == "cpu" else f"GPU, {s.world_size} GPU(s) ({spec.resources.nodes} node(s) x " \
        f"{spec.resources.gpus_per_node}), {s.strategy}{'' if s.offload == 'none' else f' + offload {s.offload}'}"
    lines = [
        f"{spec.name}: {spec.base_model} — {arch.model_type}, {params(arch.total_params)} parameters ({arch.source})",
        f"  {s.dtype}{quant}; {s.method} r={s.r} on {targets}: {params(plan.estimate.trainable)} trainable",
        f"  batch {s.batch} x {s.seq_len} tokens, gradient checkpointing {'on' if s.checkpointing else 'off'}, "
        f"{s.attn} attention; memory per {where}",
    ]
    return lines + ([line] if (line := objective.describe(spec)) else [])


def breakdown_lines(est: Estimate) -> list[str]:
    lines = [f"  {label:24s} {gib(n):>10s}" for label, n in est.parts.items()]
    return [*lines, f"  {'total':24s} {gib(est.total):>10s}"]


def fit_lines(plan: Plan) -> list[str]:
    head = f"  {'GPUs':>6s} {'per GPU':>10s}  " + "  ".join(f"{g.label:>15s}" for g in GPUS)
    lines = [head]
    for row in plan.rows:
        cells = []
        for g in GPUS:
            room = row.headroom(g)
            cells.append(f"{'fits' if room >= 0 else 'OOM':>4s} {'+' if room >= 0 else '-'}{gib(abs(room)):>9s}")
        mark = f"{row.gpus} *" if row.spec_layout else f"{row.gpus}"
        lines.append(f"  {mark:>6s} {gib(row.estimate.total):>10s}  " + "  ".join(f"{c:>15s}" for c in cells))
    return [*lines, f"  (* the spec's own layout, strategy {plan.setup.strategy}; +/- is the headroom per GPU)"]


def ladder_lines(rungs: list[Rung], gpu: Gpu) -> list[str]:
    lines = []
    first_fit = next((r for r in rungs if r.fits), None)
    for i, rung in enumerate(rungs, 1):
        if not rung.helps:
            lines.append(f"{i}. {rung.label}: {sets(rung.overrides)} — no gain here, skipped")
            continue
        verdict = "still over" if not rung.fits else f"fits {gpu.label}" + (
            ": auto-fit stops here" if rung is first_fit else "")
        lines.append(f"{i}. {rung.label}: {sets(rung.overrides)} -> {gib(rung.total)} per GPU ({verdict})")
    return lines


def other_levers(plan: Plan) -> list[str]:
    """Outside the ladder, and not applied by auto-fit: checkpointing and a smaller micro-batch."""
    s, t = plan.setup, plan.spec.training
    lines = []
    if not s.checkpointing:
        total = estimate(plan.arch, s.with_(checkpointing=True)).total
        lines.append(f"--set training.gradient_checkpointing=true -> {gib(total)} per GPU (recomputes activations)")
    least = objective.MIN_BATCH.get(s.objective, 1)  # kto's KL rows are the batch's own completions, shifted
    if s.batch > least and s.batch % least == 0:
        total = estimate(plan.arch, s.with_(batch=least)).total
        lines.append(f"--set training.per_device_batch_size={least} --set training.grad_accum="
                     f"{s.batch // least * t.grad_accum} -> {gib(total)} per GPU (same rows per optimizer step)")
    return lines


def verdict(plan: Plan) -> str:
    if plan.gpu is None:
        return f"CPU job: about {gib(plan.estimate.total)} of RAM per process; not checked against GPUs"
    room = plan.gpu.capacity - plan.estimate.total
    alternatives = f" (resources.gpu {plan.spec.resources.gpu}: the smallest GPU it may get)"
    if room >= 0:
        return f"fits: {gib(plan.estimate.total)} of {gib(plan.gpu.capacity)} per {plan.gpu.label}, " \
            f"{gib(room)} headroom{alternatives}"
    return f"does not fit: {gib(plan.estimate.total)} needed per GPU, {plan.gpu.label} has {gib(plan.gpu.capacity)}" \
        f"{alternatives}"


def auto_fit_lines(plan: Plan) -> list[str]:
    applied = plan.auto_fit
    if applied is None:
        return ["auto-fit: no combination of the ladder's rungs fits; see the ladder above"]
    overrides = [o for r in applied for o in r.overrides]
    return [f"auto-fit: {', '.join(r.label for r in applied)}: {sets(overrides)} -> {gib(applied[-1].total)} per GPU "
            f"(fits {plan.gpu.label if plan.gpu else ''})"]


def render_table(plan: Plan, with_auto_fit: bool = False) -> str:
    lines = [*describe(plan), "", "memory per " + ("process" if plan.gpu is None else "GPU") + ":",
             *breakdown_lines(plan.estimate)]
    lines += [f"  note: {n}" for n in plan.estimate.notes]
    if plan.rows:
        lines += ["", "fit per GPU type and count:", *fit_lines(plan)]
    lines += ["", verdict(plan)]
    if plan.ladder:
        lines += ["", "to make it fit (seed 004's ladder; each rung on top of the ones before):",
                  *(f"  {line}" for line in ladder_lines(plan.ladder, plan.gpu))]  # type: ignore[arg-type]
        if levers := other_levers(plan):
            lines += ["other levers, each alone (not applied by auto-fit):", *(f"  {line}" for line in levers)]
    if with_auto_fit and plan.gpu is not None:
        lines += [""] + (auto_fit_lines(plan) if not plan.fits else ["auto-fit: nothing to change, it fits"])
    return "\n".join(lines) + "\n"


def as_dict(plan: Plan, with_auto_fit: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": plan.spec.name, "base_model": plan.spec.base_model, "model_type": plan.arch.model_type,
        "parameters": plan.arch.total_params, "architecture_source": plan.arch.source,
        "trainable_parameters": plan.estimate.trainable, "device": plan.setup.device,
        "world_size": plan.setup.world_size, "strategy": plan.setup.strategy,
        "breakdown_bytes": plan.estimate.parts, "total_bytes": plan.estimate.total, "notes": plan.estimate.notes,
        "fits": plan.fits, "verdict": verdict(plan),
        **({} if (line := objective.describe(plan.spec)) is None else {"objective": {
            "name": plan.spec.training.objective, "rows_per_micro_batch": plan.setup.rows,
            "reference_forward": plan.setup.reference, "line": line.strip()}}),
        "deciding_gpu": None if plan.gpu is None else {"type": plan.gpu.key, "capacity_bytes": plan.gpu.capacity},
        "fit": [{"gpus": r.gpus, "spec_layout": r.spec_layout, "bytes_per_gpu": r.estimate.total,
                 "headroom_bytes": {g.key: r.headroom(g) for g in GPUS}} for r in plan.rows],
        "ladder": [{"rung": r.label, "set": list(r.overrides), "bytes_per_gpu": r.total, "fits": r.fits,
                    "helps": r.helps} for r in plan.ladder],
    }
    if with_auto_fit and plan.gpu is not None and not plan.fits:
        applied = plan.auto_fit
        out["auto_fit"] = None if applied is None else [o for r in applied for o in r.overrides]
    return out
