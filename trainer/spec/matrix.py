"""Matrix specs: one job per combination of values (e.g. one adapter per dimension).

    matrix:
      dimension: [empathy, humor, directness]
    name: persona-${matrix.dimension}
    data:
      train: s3://datasets/persona/${matrix.dimension}/train.jsonl

`${matrix.<key>}` in any string of the spec is replaced by the job's value; the product of all
keys' values gives the jobs. Each job's resolved spec keeps its own values in `matrix` (scalars),
so a pod that re-reads it gets exactly that job back. Torch-free: the launcher imports this.
"""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

PLACEHOLDER = re.compile(r"\$\{matrix\.([^}]*)\}")
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
VALUE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_JOBS = 256
# Fields that must differ between the jobs of a matrix, or they would overwrite each other.
DISTINCT = (("name",), ("output", "uri"), ("export", "register", "name"))


def _strings(node: Any, path: str = "") -> list[tuple[str, str]]:
    """(field path, string) for every string in a YAML tree."""
    if isinstance(node, str):
        return [(path, node)]
    if isinstance(node, dict):
        return [x for k, v in node.items() for x in _strings(v, f"{path}.{k}" if path else str(k))]
    if isinstance(node, list):
        return [x for i, v in enumerate(node) for x in _strings(v, f"{path}[{i}]")]
    return []


def _substitute(node: Any, values: dict[str, str]) -> Any:
    if isinstance(node, str):
        return PLACEHOLDER.sub(lambda m: values[m.group(1)], node)
    if isinstance(node, dict):
        return {k: _substitute(v, values) for k, v in node.items()}
    if isinstance(node, list):
        return [_substitute(v, values) for v in node]
    return node


def _get(raw: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = raw
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def _axes(matrix: Any) -> tuple[dict[str, list[str]], list[str]]:
    """The matrix's keys and values as strings; problems for anything else."""
    if not isinstance(matrix, dict) or not matrix:
        return {}, ["matrix: must map keys to lists of values, e.g. `matrix: {dimension: [empathy, humor]}`"]
    axes: dict[str, list[str]] = {}
    problems: list[str] = []
    for key, values in matrix.items():
        where = f"matrix.{key}"
        if not isinstance(key, str) or not KEY.match(key):
            problems.append(f"{where}: keys are identifiers (letters, digits, `_`), used as `${{matrix.<key>}}`")
            continue
        values = values if isinstance(values, list) else [values]
        if not values:
            problems.append(f"{where}: has no values; give at least one, e.g. [a, b]")
            continue
        out = []
        for v in values:
            if isinstance(v, bool) or not isinstance(v, str | int | float):
                problems.append(f"{where}: {v!r} is not a string or number")
                continue
            text = str(v)
            if not VALUE.match(text):
                problems.append(f"{where}: {text!r} must be lowercase letters, digits and '-' (it becomes part of "
                                "job names), e.g. 'customer-support'")
                continue
            out.append(text)
        if len(set(out)) != len(out):
            problems.append(f"{where}: lists a value twice")
        axes[key] = out
    return axes, problems


def expand(raw: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    """The raw spec of each job (with `matrix` set to its own values), or the problems that prevent it."""
    matrix = raw.get("matrix")
    used = [(path, m.group(1)) for path, text in _strings({k: v for k, v in raw.items() if k != "matrix"})
            for m in PLACEHOLDER.finditer(text)]
    if matrix is None:
        return [raw], [f"{path}: uses ${{matrix.{key}}} but the spec has no `matrix` section" for path, key in used]
    axes, problems = _axes(matrix)
    if problems:
        return [], problems
    problems += [f"{path}: ${{matrix.{key}}} is not a matrix key (keys: {', '.join(axes)})"
                 for path, key in used if key not in axes]
    for field in DISTINCT:
        value = _get(raw, field)
        if value is None:
            continue
        dotted = ".".join(field)
        missing = [k for k in axes if len(axes[k]) > 1 and f"${{matrix.{k}}}" not in str(value)]
        if missing:
            problems.append(f"{dotted}: must contain {', '.join(f'${{matrix.{k}}}' for k in missing)} so that each "
                            f"job of the matrix gets its own {dotted} (e.g. `{value}-${{matrix.{missing[0]}}}`)")
    count = 1
    for values in axes.values():
        count *= len(values)
    if count > MAX_JOBS:
        problems.append(f"matrix: {count} jobs; at most {MAX_JOBS} per submission")
    if problems:
        return [], problems
    jobs = []
    for combo in itertools.product(*axes.values()):
        values = dict(zip(axes, combo, strict=True))
        job = _substitute({k: v for k, v in raw.items() if k != "matrix"}, values)
        job["matrix"] = values
        jobs.append(json.loads(json.dumps(job)))
    return jobs, []


def group(name_template: str) -> str:
    """The label value shared by the jobs of one matrix: the name with its placeholders removed."""
    stripped = re.sub(r"-{2,}", "-", PLACEHOLDER.sub("", name_template)).strip("-")
    return stripped or "matrix"
