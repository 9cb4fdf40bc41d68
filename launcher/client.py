"""What `launch` does, as plain functions: load a spec, prepare a submission, render it.

The CLI is a thin layer over this module; tests and notebooks call it directly. A prepared submission
runs on this machine through launcher/local_job.py, on a cluster through launcher/cluster_submit.py.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

from launcher import resolve
from launcher.errors import UserError
from launcher.local_resume import recorded_template_date, resume_problems
from launcher.plan import deadline as plan_deadline
from launcher.submission import Submission, unique_name
from launcher.submission import render as render  # the API: client.render(client.prepare(spec))
from launcher.values import DEFAULT_PORT, chart_values
from trainer.spec import strategy
from trainer.spec.io import SpecError, apply_overrides, load_raw, load_spec, load_specs
from trainer.spec.job import JobSpec
from trainer.spec.matrix import group


def _problems(source: str, problems: list[str]) -> UserError:
    n = len(problems)
    return UserError(f"{source}: {n} problem{'s' if n != 1 else ''}", problems)


def load(spec_path: str | Path, overrides: Iterable[str] = ()) -> JobSpec:
    """Read, override and validate a spec, strategy included; every problem in one UserError. Relative paths in
    `overrides` are read from the current directory, those in the file from its folder."""
    try:
        spec = load_spec(spec_path, resolve.overrides_from_cwd(overrides))
    except SpecError as e:
        raise _problems(e.source, e.problems) from None
    if problems := strategy.check(spec):
        raise _problems(str(spec_path), problems)
    return spec


def summary(spec: JobSpec) -> str:
    res = spec.resources
    device = "cpu" if res.gpu == "none" else f"{res.gpu} gpu"
    length = f"{spec.training.max_steps} steps" if spec.training.max_steps else f"{spec.training.epochs:g} epoch(s)"
    return (
        f"{spec.name}: {spec.base_model}, {res.nodes} node(s) x {res.processes_per_node} process(es) on {device}, "
        f"strategy {spec.training.strategy}, {spec.adapter.method} r={spec.adapter.r}, {length}"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_all(spec_path: str | Path, overrides: Iterable[str] = ()) -> list[JobSpec]:
    """Every job of a spec file (several for a `matrix` spec), strategy checked; every problem in one UserError.
    Relative paths in `overrides` are read from the current directory, those in the file from its folder."""
    try:
        specs = load_specs(spec_path, resolve.overrides_from_cwd(overrides))
    except SpecError as e:
        raise _problems(e.source, e.problems) from None
    problems = [f"[{s.name}] {p}" if len(specs) > 1 else p for s in specs for p in strategy.check(s)]
    if problems:
        raise _problems(str(spec_path), problems)
    return specs


def matrix_label(spec_path: str | Path, overrides: Iterable[str] = ()) -> str:
    """The `kubetune.dev/matrix` label of a matrix spec's jobs (empty for other specs)."""
    raw, _ = apply_overrides(load_raw(spec_path), overrides)
    return group(str(raw.get("name", ""))) if raw.get("matrix") is not None else ""


def prepare_all(
    spec_path: str | Path, overrides: Iterable[str] = (), local: bool = False, dry_run: bool = False,
    auto_fit: bool = False, resume: str | None = None,
) -> list[Submission]:
    """`prepare` for every job of the spec file: one, or one per combination of a matrix spec's values.

    `resume`: the name of an earlier submission of one of these jobs, run again under that name."""
    specs = load_all(spec_path, overrides)
    label = matrix_label(spec_path, overrides)
    if resume is not None:
        names = [s.name for s in specs]
        specs = [s for s in specs if resume.rsplit("-", 1)[0] == s.name and len(resume) == len(s.name) + 6]
        if not specs:
            raise UserError(f"--resume {resume}: not a submission of {spec_path}, whose jobs are named "
                            f"<name>-<5 characters> with name {' or '.join(names)} (launch printed it: `job <name>: ...`)")
    return [prepare(spec_path, overrides, local, dry_run, auto_fit, spec=s, matrix_group=label, name=resume)
            for s in specs]


def with_template_date(spec: JobSpec, recorded: str | None = None) -> JobSpec:
    """`spec` with `data.template_date` set, as the pods receive it: its own, else `recorded` (the date a resumed
    job's checkpoints were trained with), else today. Chat templates that write the date then render the same
    text in every pod, restart and resume of the job (trainer/data/template_date.py)."""
    if spec.data.template_date is not None:
        return spec
    day = date.fromisoformat(recorded) if recorded else date.today()
    return spec.model_copy(update={"data": spec.data.model_copy(update={"template_date": day})})


def export_params(spec: JobSpec, spec_dir: Path) -> int | None:
    """The base model's parameter count, for sizing the export pod, when it is known here without a network
    read (a catalogued hub id, a local folder or .gguf, the local Hugging Face cache); else None."""
    if spec.export is None or resolve.is_remote(spec.base_model):
        return None
    from launcher.plan import source

    try:
        return source.architecture(spec, spec_dir).total_params
    except UserError:
        return None


def prepare(
    spec_path: str | Path, overrides: Iterable[str] = (), local: bool = False, dry_run: bool = False,
    auto_fit: bool = False, spec: JobSpec | None = None, matrix_group: str = "", name: str | None = None,
) -> Submission:
    """Validate, resolve paths for the target, name the submission and derive the chart values.

    For a cluster, local paths are errors; a dry run renders anyway and returns them as warnings.
    A cluster GPU job must fit its GPUs' memory (launcher/plan/gate.py): refused with the ladder,
    a warning in a dry run, or changed by the ladder's first fitting rungs with `auto_fit`.
    `spec`: one job of the file, already loaded (prepare_all); `matrix_group`: its matrix's label.
    `name`: run under this name (a local job resuming from its checkpoints) instead of a new one.
    An unset `data.template_date` is recorded: today, or the date a resumed job's checkpoints were trained with.
    """
    spec = spec or load(spec_path, overrides)
    warnings: list[str] = []
    notes: list[str] = []
    deadline = None  # a cluster job's activeDeadlineSeconds (resources.deadline)
    spec_dir = Path(spec_path).resolve().parent
    if local:
        spec = _for_local(spec, spec_path, spec_dir, dry_run, name)
        port = free_port()  # the pods share this machine's ports, unlike pods on a cluster
    else:
        spec, warnings, notes, deadline = _for_cluster(spec, spec_path, spec_dir, dry_run, auto_fit)
        port = DEFAULT_PORT
    spec = with_template_date(spec)  # recorded in the spec the pods read: the same date on every day of the job
    if auto_fit and (local or spec.resources.gpu == "none"):
        notes.append("--auto-fit: nothing to fit; only cluster GPU jobs are checked against GPU memory")
    resumed, name = name is not None, name or unique_name(spec.name)
    values = chart_values(spec, name, port, matrix_group, params=export_params(spec, spec_dir))
    if deadline is not None and deadline.seconds:
        values["job"]["activeDeadlineSeconds"] = deadline.seconds
    if local:
        _share_this_machine(values, spec)
    return Submission(name, spec, Path(spec_path), local, values, warnings, notes, resumed=resumed)


def _for_local(spec: JobSpec, spec_path: str | Path, spec_dir: Path, dry_run: bool, name: str | None) -> JobSpec:
    """The job for this machine: its local inputs must exist (and its data read, unless a dry run), its paths
    made absolute; resuming as `name`, that job's checkpoints must be there, and their template date is kept."""
    problems = resolve.local_problems(spec, spec_dir) + ([] if dry_run else resolve.gpu_problems(spec))
    if not problems and not dry_run:  # an empty or misformatted dataset fails here, not after the pods start
        from launcher.datacheck import precheck

        problems = precheck(spec, spec_dir)
    if problems:
        raise _problems(str(spec_path), problems)
    spec = resolve.for_local(spec, spec_dir)
    if name is not None and (problems := resume_problems(name, spec.output.uri or "")):
        raise _problems(str(spec_path), problems)
    if name is not None:  # a resumed job renders with the date its checkpoints were trained with
        spec = with_template_date(spec, recorded_template_date(spec.output.uri or ""))
    return spec


def _for_cluster(
    spec: JobSpec, spec_path: str | Path, spec_dir: Path, dry_run: bool, auto_fit: bool
) -> tuple[JobSpec, list[str], list[str], plan_deadline.Deadline]:
    """The job for a cluster, with the warnings (a dry run's) and notes said about it, and its deadline: local
    paths refused, a GPU job checked against its GPUs' memory (and fitted, with `auto_fit`)."""
    warnings: list[str] = []
    notes: list[str] = []
    if problems := resolve.cluster_problems(spec, spec_dir):
        if not dry_run:
            raise _problems(str(spec_path), problems)
        warnings = problems
    params = None  # the base model's size, found by the fit check
    if spec.resources.gpu != "none":
        from launcher.plan import gate

        fit = gate.check(spec, Path(spec_path), auto_fit=auto_fit, dry_run=dry_run)
        spec, warnings, notes = fit.spec, warnings + fit.warnings, fit.notes
        params = fit.params
    deadline = plan_deadline.resolve(spec, params)
    notes += [deadline.line] if deadline.line else []
    return spec, warnings, notes, deadline


def _share_this_machine(values: dict[str, Any], spec: JobSpec) -> None:
    """Chart values for local pods: all share this machine's cores (each would otherwise take them all), and
    start together (a short rendezvous wait)."""
    values["env"]["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // spec.resources.world_size))
    from launcher.backends.local import PREFLIGHT_TIMEOUT  # local pods start together: a short wait

    values["preflight"] = {"timeoutSeconds": PREFLIGHT_TIMEOUT}
