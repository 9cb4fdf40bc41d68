"""Local paths in a spec: made absolute for the local backend, refused for a cluster.

A relative path written in the spec file is read from the file's folder; one given on the command line
(`--set data.train=...`) from the current directory, as helm and kubectl read paths: `overrides_from_cwd`
makes those absolute before the spec is loaded.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainer.spec.io import parse_override, spec_from_dict
from trainer.spec.job import JobSpec
from trainer.storage import (  # the one test: `file://` is this machine, not remote
    is_remote,
    local_path,
    output_location,
)

# The fields that name a file or folder on this machine, unless a URI (base_model: unless a hub id)
PATH_FIELDS = ("data.train", "data.eval", "base_model", "model.chat_template", "eval.sources_root", "output.uri",
               "adapter.init_from")


def _data_fields(spec: JobSpec) -> list[tuple[str, str]]:
    """(field path, value) of every data URI in the spec."""
    out: list[tuple[str, str]] = []
    for field in ("train", "eval"):
        value = getattr(spec.data, field)
        if isinstance(value, str):
            out.append((f"data.{field}", value))
        elif isinstance(value, list):
            out += [(f"data.{field}[{i}]", v) for i, v in enumerate(value)]
    return out


def local_base_model(spec: JobSpec, base: Path) -> str | None:
    """The base model as an absolute path when it names an existing file or folder, else None."""
    if is_remote(spec.base_model):
        return None
    candidate = local_path(spec.base_model, base)
    return candidate if os.path.exists(candidate) else None


def local_init_from(spec: JobSpec) -> str | None:
    """`adapter.init_from` when it names a folder on this machine (not `s3://`, not `models:/NAME@ALIAS`)."""
    given = spec.adapter.init_from
    return None if given is None or is_remote(given) or given.startswith("models:/") else given


def for_local(spec: JobSpec, spec_dir: Path) -> JobSpec:
    """Relative paths made absolute against the spec's folder; `output.uri` defaults to `runs/<name>` there."""
    raw = spec.model_dump(mode="json")
    for field in ("train", "eval"):
        value = raw["data"][field]
        if isinstance(value, str) and not is_remote(value):
            raw["data"][field] = local_path(value, spec_dir)
        elif isinstance(value, list):
            raw["data"][field] = [v if is_remote(v) else local_path(v, spec_dir) for v in value]
    if (model_path := local_base_model(spec, spec_dir)) is not None:
        raw["base_model"] = model_path
    template = spec.model.chat_template
    if template is not None and not is_remote(template):
        raw["model"]["chat_template"] = local_path(template, spec_dir)
    sources = spec.eval.sources_root
    if sources is not None and not is_remote(sources):
        raw["eval"]["sources_root"] = local_path(sources, spec_dir)
    if (parent := local_init_from(spec)) is not None:
        raw["adapter"]["init_from"] = local_path(parent, spec_dir)
    raw["output"]["uri"] = output_location(spec.output.uri, spec.name, spec_dir)
    return spec_from_dict(raw, source="resolved spec")


def overrides_from_cwd(overrides: Iterable[str], cwd: Path | None = None) -> list[str]:
    """`--set` overrides with every relative local path of a PATH_FIELDS field made absolute against the current
    directory (`cwd`); the others, and one that is not KEY=VALUE (loading says why), as they were."""
    here = cwd or Path(os.getcwd())
    out = []
    for item in overrides:
        try:
            path, value = parse_override(item)
        except ValueError:
            out.append(item)
            continue
        key = ".".join(path)
        resolved = _paths_from(key, value, here)
        out.append(item if resolved == value else f"{key}={json.dumps(resolved)}")
    return out


def _paths_from(key: str, value: Any, cwd: Path) -> Any:
    """`value`, set at `key`, with the local paths of the path fields in it (it may be a section) made absolute."""
    if isinstance(value, dict):
        return {k: _paths_from(f"{key}.{k}", v, cwd) for k, v in value.items()}
    if key not in PATH_FIELDS:
        return value
    if isinstance(value, list) and key in ("data.train", "data.eval"):
        return [_paths_from(key, v, cwd) for v in value]
    if not isinstance(value, str) or not value or is_remote(value) or value.startswith("models:/"):
        return value
    if key == "base_model" and not (looks_like_path(value) or os.path.exists(local_path(value, cwd))):
        return value  # a hub id
    return local_path(value, cwd)


def looks_like_path(value: str) -> bool:
    """A hub id is `org/name`; these can only be meant as files or folders."""
    return value.startswith(("/", "./", "../", "~")) or value.endswith(".gguf")


def has_nvidia_gpu() -> bool:
    """Whether this machine shows an NVIDIA GPU (without importing torch)."""
    return os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl")


def gpu_problems(spec: JobSpec) -> list[str]:
    """A GPU job about to run on a machine without one (checked before any process starts)."""
    if spec.resources.gpu == "none" or has_nvidia_gpu():
        return []
    return [
        f"resources.gpu: `{spec.resources.gpu}` asks for GPUs and this machine has no NVIDIA GPU; "
        "for a CPU run set `resources.gpu: none` (or --set resources.gpu=none)"
    ]


def local_problems(spec: JobSpec, spec_dir: Path) -> list[str]:
    """Local inputs that do not exist, found before any process starts."""
    problems = [
        f"{field}: nothing matches {local_path(value, spec_dir)!r} (relative paths are read from the spec's folder)"
        for field, value in _data_fields(spec)
        if not is_remote(value) and not glob.glob(local_path(value, spec_dir))
    ]
    template = spec.model.chat_template
    if template is not None and not is_remote(template) and not os.path.isfile(local_path(template, spec_dir)):
        problems.append(f"model.chat_template: {local_path(template, spec_dir)!r} is not a file (a Jinja template)")
    sources = spec.eval.sources_root
    if sources is not None and not is_remote(sources) and not os.path.isdir(local_path(sources, spec_dir)):
        problems.append(f"eval.sources_root: {local_path(sources, spec_dir)!r} is not a folder (the sources that "
                        "answers cite)")
    if looks_like_path(spec.base_model) and local_base_model(spec, spec_dir) is None:
        problems.append(
            f"base_model: {local_path(spec.base_model, spec_dir)!r} does not exist (for the quickstart model: `make setup`)"
        )
    if (parent := local_init_from(spec)) is not None and not os.path.isdir(local_path(parent, spec_dir)):
        problems.append(f"adapter.init_from: {local_path(parent, spec_dir)!r} is not a folder (a job's output or an "
                        "adapter folder): run the job it starts from first")
    return problems


def cluster_problems(spec: JobSpec, spec_dir: Path) -> list[str]:
    """Every field that names a path on this machine, which pods on a cluster cannot read."""
    problems = [
        f"{field}: {value!r} is a local path, which pods on the cluster cannot read; upload it and use an s3:// URI"
        for field, value in _data_fields(spec)
        if not is_remote(value)
    ]
    if local_base_model(spec, spec_dir) is not None:
        problems.append(
            f"base_model: {spec.base_model!r} is a local path; upload the model and use an s3:// prefix (or a hub id)"
        )
    template = spec.model.chat_template
    if template is not None and not is_remote(template):
        problems.append(f"model.chat_template: {template!r} is a local path; upload it and use an s3:// URI")
    sources = spec.eval.sources_root
    if sources is not None and not is_remote(sources):
        problems.append(f"eval.sources_root: {sources!r} is a local path; upload the sources and use an s3:// prefix")
    if (parent := local_init_from(spec)) is not None:
        problems.append(f"adapter.init_from: {parent!r} is a local path; upload the parent job's output and use an "
                        "s3:// prefix (or `models:/NAME@ALIAS`)")
    uri = spec.output.uri
    if uri is None:
        problems.append("output.uri: a cluster job needs somewhere to write results: set an s3:// prefix")
    elif not is_remote(uri):
        problems.append(f"output.uri: {uri!r} is a local path; use an s3:// prefix such as s3://runs/{spec.name}/")
    return problems
