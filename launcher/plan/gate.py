"""The fit check `launch submit` runs for cluster GPU jobs: refuse, warn (dry run) or auto-fit."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import UserError
from launcher.plan import report, source
from launcher.plan.ladder import with_overrides
from trainer.spec.job import JobSpec


@dataclass
class Gate:
    spec: JobSpec  # auto-fitted when asked and needed
    warnings: list[str] = field(default_factory=list)  # what a dry run shows instead of refusing
    notes: list[str] = field(default_factory=list)  # printed beside the submission (auto-fit, not checked)
    params: int | None = None  # the base model's parameter count, when its architecture was found


def check(spec: JobSpec, spec_path: Path, *, auto_fit: bool = False, dry_run: bool = False) -> Gate:
    """Estimate the spec's memory per GPU; a spec that does not fit is refused with the ladder (UserError),
    shown as warnings in a dry run, or changed by the ladder's first fitting rungs with `auto_fit`."""
    try:
        arch = source.architecture(spec, spec_path.resolve().parent)
    except UserError as e:
        if auto_fit:
            raise UserError(f"--auto-fit: {e.message}") from None
        return Gate(spec, notes=[f"fit not checked: {e.message}"])
    plan = report.make(spec, arch)
    if plan.fits:
        return Gate(spec, notes=[f"memory: {report.verdict(plan)}"], params=arch.total_params)
    numbers = report.verdict(plan)
    ladder = report.ladder_lines(plan.ladder, plan.gpu)  # type: ignore[arg-type]
    ladder += [f"(not in the ladder) {line}" for line in report.other_levers(plan)]
    if auto_fit:
        applied = plan.auto_fit
        if applied is None:
            raise UserError(f"{spec_path}: {numbers}; --auto-fit: even every rung of the ladder does not fit",
                            ladder)
        overrides = [o for rung in applied for o in rung.overrides]
        fitted = with_overrides(spec, overrides)
        changed = f"auto-fit: {numbers}; applied {report.sets(overrides)}"
        return Gate(fitted, notes=[changed, f"memory: {report.verdict(report.make(fitted, arch))}"],
                    params=arch.total_params)
    if dry_run:
        return Gate(spec, warnings=[f"memory: {numbers}", *(f"to fit: {line}" for line in ladder)],
                    params=arch.total_params)
    raise UserError(
        f"{spec_path}: {numbers}. `launch plan {spec_path}` shows the breakdown; --auto-fit applies the first rungs "
        "that fit. The ladder, each rung on top of the ones before:", ladder
    )
