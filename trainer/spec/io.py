"""Reading a job spec: YAML, dotted `--set` overrides, and errors a user can act on.

Every problem is collected and reported at once, each naming its field path and what would
be valid. Torch-free: the launcher imports this.
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from trainer.spec import matrix
from trainer.spec.errors import UsageError
from trainer.spec.job import JobSpec


class SpecError(UsageError):
    """A spec that cannot be used; `problems` holds one line per problem."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        head = f"{self.source}: {n} problem{'s' if n != 1 else ''}"
        return "\n".join([head, *(f"  - {p}" for p in self.problems)])


def spec_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The pods' entry points' (trainer.train, trainer.export) spec arguments, defined once: `--spec`, `--set`
    (as `launch`'s, parsed by `parse_override`) and `--base-dir`."""
    parser.add_argument("--spec", required=True, help="path to the job spec YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, e.g. training.max_steps=10 (repeatable)")
    parser.add_argument("--base-dir", help="folder that relative paths in the spec are taken against (default: the spec's)")
    return parser


def parse_override(item: str) -> tuple[list[str], Any]:
    """`training.learning_rate=1e-4` -> (['training', 'learning_rate'], 0.0001)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ValueError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. training.learning_rate=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ValueError(f"--set {key}: the value {raw!r} is not valid YAML ({e.problem})") from None
    except ValueError as e:  # a date that does not exist: 2025-02-30
        raise ValueError(f"--set {key}: the value {raw!r} is not valid ({e})") from None
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> tuple[dict[str, Any], list[str]]:
    """Apply dotted overrides on a copy of `raw`; returns (new dict, problems). YAML dates (`2025-08-05`, unquoted)
    become their ISO text, as JSON holds them."""
    data = json.loads(json.dumps(raw, default=_iso))
    problems: list[str] = []
    for item in overrides:
        try:
            path, value = parse_override(item)
        except ValueError as e:
            problems.append(str(e))
            continue
        node = data
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                where = ".".join(path[: i + 1])
                problems.append(f"--set {'.'.join(path)}: {where} is {type(nxt).__name__}, not a section")
                break
            node = nxt
        else:
            node[path[-1]] = json.loads(json.dumps(value, default=_iso))
    return data, problems


def _iso(value: Any) -> str:
    if isinstance(value, date):  # datetime too
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not a spec value")


def _loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("literal['all-linear']", "list[str]", "str", "list", "none", "TemplateSpec"):
            continue  # pydantic's union-branch markers are noise to a user
        else:
            out += f".{part}" if out else str(part)
    return out


def _model_at(loc: Sequence[Any]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = JobSpec
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return model if isinstance(part, str) else None
        ann = model.model_fields[part].annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None and isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
    return model


def _describe(err: dict[str, Any]) -> str:
    loc = tuple(err["loc"])
    path = _loc(loc) or "(spec)"
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = _model_at(loc[:-1])
        valid = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        return f"{path}: unknown field; {hint}valid fields here: {', '.join(valid)}"
    if kind == "missing":
        return f"{path}: required field is missing"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    if kind in ("literal_error", "enum") or "greater" in kind or "less" in kind or kind.endswith("_parsing") or kind.endswith("_type"):
        return f"{path}: {msg} (got {got!r})"
    return f"{path}: {msg}"


def validation_problems(e: ValidationError) -> list[str]:
    seen: list[str] = []
    for err in e.errors(include_url=False):
        line = _describe(err)
        if line not in seen:
            seen.append(line)
    return seen


def specs_from_dict(raw: Any, source: str = "spec", overrides: Iterable[str] = ()) -> list[JobSpec]:
    """Every job of a spec: one, or one per combination of a `matrix` spec's values."""
    if not isinstance(raw, dict):
        raise SpecError(source, [f"the spec must be a YAML mapping with `name`, `base_model`, `data`, ... (got {type(raw).__name__})"])
    data, problems = apply_overrides(raw, overrides)
    jobs, more = matrix.expand(data)
    problems += more
    specs: list[JobSpec] = []
    per_job: list[list[str]] = []
    for job in jobs:
        try:
            specs.append(JobSpec.model_validate(job))
            per_job.append([])
        except ValidationError as e:
            per_job.append(validation_problems(e))
    common = [p for p in per_job[0] if all(p in found for found in per_job)] if per_job else []
    problems += common  # a mistake outside the matrix values: said once, not once per job
    for job, found in zip(jobs, per_job, strict=True):
        cell = ", ".join(f"{k}={v}" for k, v in (job.get("matrix") or {}).items())
        problems += [f"[matrix {cell}] {p}" for p in found if p not in common]
    if problems:
        raise SpecError(source, problems)
    return specs


def spec_from_dict(raw: Any, source: str = "spec", overrides: Iterable[str] = ()) -> JobSpec:
    """The one job of a spec; a matrix of several jobs is an error naming how to pick one."""
    specs = specs_from_dict(raw, source, overrides)
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        keys = ", ".join(f"--set matrix.{k}={v}" for k, v in (specs[0].matrix or {}).items())
        raise SpecError(source, [f"matrix: this spec is {len(specs)} jobs ({names}); pick one with {keys}, or use "
                                 "`launch` (it submits every job)"])
    return specs[0]


def load_raw(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(str(path), ["file not found: give the path to a job spec YAML file"]) from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as e:
        raise SpecError(str(path), [f"cannot read the spec: {e}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise SpecError(str(path), [f"{where}not valid YAML ({getattr(e, 'problem', e)})"]) from None
    except ValueError as e:  # a date that does not exist: 2025-02-30
        raise SpecError(str(path), [f"not valid YAML ({e})"]) from None
    if raw is None:
        raise SpecError(str(path), ["the file is empty: a spec needs at least `name`, `base_model` and `data.train`"])
    return raw


def load_spec(path: str | Path, overrides: Iterable[str] = ()) -> JobSpec:
    """Read, override and validate a spec file of one job; raises SpecError listing every problem."""
    return spec_from_dict(load_raw(path), str(path), overrides)


def load_specs(path: str | Path, overrides: Iterable[str] = ()) -> list[JobSpec]:
    """Read, override and validate a spec file: every job of it (a matrix spec has several)."""
    return specs_from_dict(load_raw(path), str(path), overrides)


def dump_spec(spec: JobSpec) -> str:
    """The resolved spec as YAML, every default spelled out (what the pods receive)."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def spec_hash(spec: JobSpec) -> str:
    blob = json.dumps(spec.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def flatten(spec: JobSpec) -> dict[str, str]:
    """Dotted key -> string value, for MLflow params."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = json.dumps(node) if isinstance(node, list) else str(node)

    walk("", spec.model_dump(mode="json"))
    return out
