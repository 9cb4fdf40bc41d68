"""Where a spec's base model architecture comes from, without downloading the model.

In order: `--model-config` (a config.json, a folder holding one, or a .gguf); a local folder's
config.json or a local .gguf's header; an `s3://` model's config.json or GGUF header (read through
fsspec, header bytes only); the catalogue of known hub ids; the local Hugging Face cache. Anything
else is a UserError that says how to plan it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import IO, Any

from launcher import resolve
from launcher.errors import UserError
from launcher.plan import catalog, gguf
from launcher.plan.arch import Architecture, from_hf_config
from trainer.spec.job import JobSpec


def _read_config_json(read: IO[str], where: str) -> dict[str, Any]:
    try:
        data = json.load(read)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object (a model's config.json)")
    return data


def from_local(path: Path, field: str) -> Architecture:
    """A config.json file, a model folder holding one, or a .gguf file."""
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{field}: {path} has no config.json; expected a saved Hugging Face model folder")
        path = path / "config.json"
    if not path.is_file():
        raise UserError(f"{field}: {path} does not exist")
    if path.suffix.lower() == ".gguf":
        with path.open("rb") as f:
            metadata, shapes = gguf.read_header(f, str(path))
        return from_hf_config(gguf.config_from_gguf(metadata, shapes, str(path)), str(path))
    with path.open(encoding="utf-8") as f:
        return from_hf_config(_read_config_json(f, str(path)), str(path))


def _from_remote(uri: str) -> Architecture:
    import fsspec

    # fail in seconds, not after botocore's minutes of retries, when S3 is unreachable from here
    options = {"config_kwargs": {"connect_timeout": 5, "read_timeout": 15, "retries": {"max_attempts": 2}}} \
        if uri.startswith(("s3://", "s3a://")) else {}
    try:
        if uri.lower().endswith(".gguf"):
            with fsspec.open(uri, "rb", **options) as f:
                metadata, shapes = gguf.read_header(f, uri)  # type: ignore[arg-type]
            return from_hf_config(gguf.config_from_gguf(metadata, shapes, uri), uri)
        config_uri = uri.rstrip("/") + "/config.json"
        with fsspec.open(config_uri, "r", encoding="utf-8", **options) as f:
            return from_hf_config(_read_config_json(f, config_uri), config_uri)  # type: ignore[arg-type]
    except UserError:
        raise
    except Exception as e:  # no credentials, no such key, no s3fs: the plan cannot read it from here
        raise UserError(
            f"base_model: cannot read the architecture from {uri} ({type(e).__name__}: {e}); plan it with "
            "`--model-config` and a local copy of its config.json (or its .gguf)"
        ) from None


def hf_cache_config(model_id: str) -> Path | None:
    """The newest cached config.json of a hub id in the local Hugging Face cache, if any."""
    root = os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "hub"
    snapshots = Path(root) / f"models--{model_id.replace('/', '--')}" / "snapshots"
    configs = sorted(snapshots.glob("*/config.json"), key=lambda p: p.stat().st_mtime) if snapshots.is_dir() else []
    return configs[-1] if configs else None


def architecture(spec: JobSpec, spec_dir: Path, model_config: Path | None = None) -> Architecture:
    """The base model's architecture for this spec (see the module docstring for the order)."""
    if model_config is not None:
        return from_local(model_config, "--model-config")
    local = resolve.local_base_model(spec, spec_dir)
    if local is not None:
        return from_local(Path(local), "base_model")
    if resolve.is_remote(spec.base_model):
        return _from_remote(spec.base_model)
    if resolve.looks_like_path(spec.base_model):
        raise UserError(f"base_model: {spec.base_model!r} does not exist (relative paths are read from the spec's folder)")
    known = catalog.lookup(spec.base_model)
    if known is not None:
        return from_hf_config(known, "kubetune's catalogue")
    cached = hf_cache_config(spec.base_model)
    if cached is not None:
        return from_local(cached, "base_model")
    raise UserError(
        f"base_model: {spec.base_model} is not in the plan's catalogue of known models and has no config.json in "
        "the local Hugging Face cache, so its size is unknown here. Plan it with `launch plan SPEC --model-config "
        "PATH` (its config.json, a folder holding one, or its .gguf), or point base_model at a local model folder. "
        f"Catalogued: {', '.join(catalog.known_ids())}"
    )
