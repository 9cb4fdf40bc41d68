"""What `launch` does, as plain functions: load a spec, prepare a submission, render it, run it.

The CLI is a thin layer over this module; tests and notebooks call it directly.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import string
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from launcher import helm, resolve
from launcher.errors import PodFailed, UserError
from launcher.plan import deadline as plan_deadline
from launcher.values import DEFAULT_PORT, chart_values
from trainer.spec import strategy
from trainer.spec.io import SpecError, apply_overrides, load_raw, load_spec, load_specs
from trainer.spec.job import JobSpec
from trainer.spec.matrix import group
from trainer.train.preemption import EXIT_PREEMPTED

if TYPE_CHECKING:
    from launcher.backends.kube_submit import Created
    from launcher.backends.kubeconfig import Target
    from launcher.backends.local_run import Outcome

SUFFIX_CHARS = string.ascii_lowercase + string.digits


@dataclass
class Submission:
    name: str  # unique per submission: `<spec.name>-<5 chars>`
    spec: JobSpec  # resolved: what the pods read
    spec_path: Path
    local: bool
    values: dict[str, Any]
    warnings: list[str]  # what a cluster would refuse, shown by a dry run instead of failing it
    notes: list[str] = field(default_factory=list)  # the GPU memory check: verdict, auto-fit changes
    resumed: bool = False  # `--resume`: an earlier submission's name, run again to continue from its checkpoints


def unique_name(base: str) -> str:
    return f"{base}-{''.join(secrets.choice(SUFFIX_CHARS) for _ in range(5))}"


def _problems(source: str, problems: list[str]) -> UserError:
    n = len(problems)
    return UserError(f"{source}: {n} problem{'s' if n != 1 else ''}", problems)


def load(spec_path: str | Path, overrides: Iterable[str] = ()) -> JobSpec:
    """Read, override and validate a spec, strategy included; every problem in one UserError."""
    try:
        spec = load_spec(spec_path, overrides)
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
    """Every job of a spec file (several for a `matrix` spec), strategy checked; every problem in one UserError."""
    try:
        specs = load_specs(spec_path, overrides)
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


def resume_problems(name: str, output: str) -> list[str]:
    """Why job `name` cannot resume from a local `output` (empty when its checkpoints are there)."""
    if resolve.is_remote(output):
        return []  # the trainer reads it (this launcher may not have the S3 client)
    import json

    from trainer.train.checkpoint import FOLDER, MANIFEST

    manifest = Path(output) / FOLDER / MANIFEST
    if not manifest.is_file():
        return [f"{manifest.parent} holds no checkpoint, so job {name} cannot resume; submit without --resume to "
                "start afresh"]
    try:
        saved = json.loads(manifest.read_text(encoding="utf-8"))
        job, step = saved["job_name"], saved["entries"][-1]["step"]
    except (ValueError, KeyError, IndexError, TypeError):
        return [f"{manifest} is not a kubetune checkpoint manifest; delete {manifest.parent} and submit afresh"]
    if job != name:
        return [f"the checkpoints in {manifest.parent} are job {job}'s (step {step}), not {name}'s: "
                f"--resume {job} continues that one"]
    return []


def recorded_template_date(output: str) -> str | None:
    """The `data.template_date` the checkpoints in a local `output` were trained with (None: none recorded)."""
    if resolve.is_remote(output):
        return None  # the trainer reads it (this launcher may not have the S3 client); a different date is refused
    import json

    from trainer.train.checkpoint import FOLDER, MANIFEST

    try:
        saved = json.loads((Path(output) / FOLDER / MANIFEST).read_text(encoding="utf-8"))
        recorded = saved["spec"].get("data.template_date")
        return date.fromisoformat(recorded).isoformat()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


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
        port = free_port()  # the pods share this machine's ports, unlike pods on a cluster
    else:
        if problems := resolve.cluster_problems(spec, spec_dir):
            if not dry_run:
                raise _problems(str(spec_path), problems)
            warnings = problems
        port = DEFAULT_PORT
        params = None  # the base model's size, found by the fit check
        if spec.resources.gpu != "none":
            from launcher.plan import gate

            fit = gate.check(spec, Path(spec_path), auto_fit=auto_fit, dry_run=dry_run)
            spec, warnings, notes = fit.spec, warnings + fit.warnings, fit.notes
            params = fit.params
        deadline = plan_deadline.resolve(spec, params)
        notes += [deadline.line] if deadline.line else []
    spec = with_template_date(spec)  # recorded in the spec the pods read: the same date on every day of the job
    if auto_fit and (local or spec.resources.gpu == "none"):
        notes.append("--auto-fit: nothing to fit; only cluster GPU jobs are checked against GPU memory")
    resumed, name = name is not None, name or unique_name(spec.name)
    values = chart_values(spec, name, port, matrix_group, params=export_params(spec, spec_dir))
    if deadline is not None and deadline.seconds:
        values["job"]["activeDeadlineSeconds"] = deadline.seconds
    if local:  # all pods share this machine's cores; each would otherwise take them all
        values["env"]["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // spec.resources.world_size))
        from launcher.backends.local import PREFLIGHT_TIMEOUT  # local pods start together: a short wait

        values["preflight"] = {"timeoutSeconds": PREFLIGHT_TIMEOUT}
    return Submission(name, spec, Path(spec_path), local, values, warnings, notes, resumed=resumed)


def render(sub: Submission, extra_values: Sequence[Path] = (), namespace: str = "default") -> str:
    """The manifests `helm template` renders for this submission."""
    return helm.template(sub.name, sub.values, extra_values, namespace)


def submit_cluster(
    sub: Submission, target: Target, extra_values: Sequence[Path] = (), say: Callable[[str], None] = print
) -> list[Created]:
    """Render for the target's namespace, say the plan, then create the objects (backends/kube_submit.py)."""
    from launcher.backends import kube_submit
    from launcher.backends.kubernetes import Cluster
    from launcher.cluster import plan_lines

    manifests = helm.parse_manifests(render(sub, extra_values, namespace=target.namespace))
    cluster = Cluster(target)
    if sub.resumed:
        from launcher.backends.kube_resume import retire

        retire(cluster, sub.name, manifests, say)
    for line in plan_lines(sub, manifests, target):
        say(line)
    return kube_submit.create(cluster, manifests, sub.name, say)


def local_preemption() -> tuple[int, re.Pattern[str]] | None:
    """`KUBETUNE_LOCAL_SIGTERM=RANK:REGEX`: SIGTERM to pod RANK when its log matches REGEX (a simulated
    preemption, for tests and for trying out resuming; launcher/backends/local_run.py)."""
    value = os.environ.get("KUBETUNE_LOCAL_SIGTERM")
    if not value:
        return None
    rank, sep, pattern = value.partition(":")
    try:
        if not (sep and rank.isdigit()):
            raise ValueError("not RANK:REGEX")
        return int(rank), re.compile(pattern)
    except (ValueError, re.error) as e:
        raise UserError(f"KUBETUNE_LOCAL_SIGTERM={value!r}: {e}; write RANK:REGEX, e.g. 0:\\[train\\] step 7/") from None


def run_local(sub: Submission, out: IO[str] | None = None, extra_values: Sequence[Path] = ()) -> None:
    """Render the chart and run each pod of its Job as a local process; raises PodFailed on failure."""
    from launcher.backends.local import plan
    from launcher.backends.local_run import LocalRun

    manifests = helm.parse_manifests(render(sub, extra_values))
    preempt = local_preemption()
    with tempfile.TemporaryDirectory(prefix=f"kubetune-{sub.name}-") as tmp:
        pods = plan(manifests, Path(tmp) / "training", cwd=Path.cwd())
        outcome = LocalRun(pods, out=out or sys.stdout, preempt=preempt).run()
        _raise_on_failure(sub, outcome, "")
        if sub.spec.export is not None:  # suspended until training succeeded: on a cluster rank 0 starts it, here we do
            pods = plan(manifests, Path(tmp) / "export", cwd=Path.cwd(), component="export")
            outcome = LocalRun(pods, out=out or sys.stdout, label="export").run()
            report = f"\n  the verification report: {sub.spec.output.uri}/export/verify.txt"
            _raise_on_failure(sub, outcome, report)


def _raise_on_failure(sub: Submission, outcome: Outcome, report: str) -> None:
    if outcome.signal is not None:
        raise PodFailed(f"job {sub.name}: stopped by {signal.Signals(outcome.signal).name}", exit_code=130)
    if outcome.first_failure is not None and outcome.codes[outcome.first_failure] == EXIT_PREEMPTED:
        raise PodFailed(
            f"job {sub.name}: stopped after SIGTERM at a step boundary, with a checkpoint in "
            f"{sub.spec.output.uri}/checkpoints; continue it with: launch submit --local --resume {sub.name} "
            f"{sub.spec_path}", exit_code=EXIT_PREEMPTED,
        )
    if outcome.first_failure is not None:
        rank = outcome.first_failure
        stopped = f"; stopped rank(s) {', '.join(map(str, outcome.stopped))}" if outcome.stopped else ""
        cause = f"\n  {outcome.errors[rank]}" if rank in outcome.errors else ""
        raise PodFailed(
            f"job {sub.name}: {outcome.who(rank)} exited with code {outcome.codes[rank]}{stopped}{cause}{report}"
        )
    if not outcome.ok:
        raise PodFailed(f"job {sub.name}: pods ended with exit codes {outcome.codes}{report}")


def result_lines(sub: Submission) -> list[str]:
    """Where a finished job's results are, read from its `_SUCCESS` marker when the output is local."""
    uri = sub.spec.output.uri or ""
    marker = Path(uri) / "_SUCCESS"
    if resolve.is_remote(uri) or not marker.is_file():
        return [f"results: {uri}"]
    import json

    done = json.loads(marker.read_text(encoding="utf-8"))
    lines = [
        f"adapter:    {Path(uri) / 'adapter'}",
        f"MLflow run: {done.get('run_id')} ({done.get('tracking_uri')})",
        f"steps:      {done.get('steps')}, final loss {done.get('final_loss')}",
    ]
    tracking = str(done.get("tracking_uri") or "")
    if tracking.startswith("sqlite:///"):
        lines.append(f"browse it:  mlflow ui --backend-store-uri {tracking}")
    return lines
