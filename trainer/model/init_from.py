"""`adapter.init_from`: the trained adapter a job starts from, e.g. an SFT job's output starting a DPO job.

`resolve` makes it a local folder holding a PEFT adapter (`adapter_config.json` + `adapter_model.safetensors`):

- a local folder (relative to the spec's folder) or an `s3://` prefix: a job's output, whose `adapter/` is used and
  whose `spec.yaml` and `_SUCCESS` name the parent's base model and training run; or an adapter folder itself;
- `models:/NAME@ALIAS` or `models:/NAME/VERSION` of the MLflow registry at `tracking.mlflow_uri` (else the job's
  own local store, `<output>/mlflow.db`). An adapter version (trainer/export/register.py registers it with the
  training run's `export/adapter` artifacts as its source) is downloaded from its source. Another version of a
  kubetune export (a GGUF, the merged model) stands for the adapter of the same run: that run's adapter version,
  else the `adapter` artifacts training logged to the run.

It is checked before the base model is loaded: its LoRA settings must be the spec's `adapter` section, and its base
model (when known) the spec's `base_model`; each difference is named with its fix. `load_into` (called by
trainer/model/load.py's `add_adapter`) puts its weights into the new adapter, and checks every tensor landed.
`Parent.tags()` is the lineage the run records. Torch-free at import; downloads go to a cache once per content, so
a node's first rank should resolve first (as for the base model).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from trainer import storage
from trainer.model.errors import ModelError
from trainer.spec.job import JobSpec
from trainer.spec.model import AdapterSpec

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
ADAPTER_KIND = "adapter"  # the `kubetune.kind` tag of an adapter version (trainer/export/publish.py)


@dataclass(frozen=True)
class Parent:
    """The adapter a job starts from, found and fetched."""

    given: str  # adapter.init_from as written
    folder: Path  # the local folder with adapter_config.json and the weights
    resolved: str  # what it was found as: a folder, an s3:// prefix, `models:/NAME/VERSION` or `runs:/RUN/adapter`
    run_id: str | None = None  # the parent's training run, when known
    base_model: str | None = None  # the parent's base model, when known
    config: dict[str, Any] = field(default_factory=dict)  # its adapter_config.json

    def tags(self) -> dict[str, str]:
        """The lineage tags of the run it starts (the export copies them onto its registered versions)."""
        tags = {"kubetune.parent": self.given, "kubetune.parent.resolved": self.resolved}
        return tags | ({"kubetune.parent.run_id": self.run_id} if self.run_id else {})


def cache_root() -> Path:
    """Downloaded parents: `$KUBETUNE_CACHE_DIR/adapters` (as trainer/model/load.py's models)."""
    return Path(os.environ.get("KUBETUNE_CACHE_DIR") or Path.home() / ".cache" / "kubetune") / "adapters"


def resolve(spec: JobSpec, base_dir: Path | None = None) -> Parent | None:
    """`adapter.init_from` as a local adapter folder, checked against `spec`; None when the spec has none.
    A relative folder is taken against `base_dir` (the spec's folder)."""
    given = spec.adapter.init_from
    if given is None:
        return None
    if given.startswith("models:/"):
        parent = from_registry(given, registry_uri(spec, base_dir))
    else:
        parent = from_folder(given, base_dir)
    check(parent, spec, base_dir)
    return parent


# -- a folder or an s3:// prefix ---------------------------------------------------------------
def from_folder(given: str, base_dir: Path | None = None) -> Parent:
    remote = storage.is_remote(given)
    uri = given.rstrip("/") if remote else storage.local_path(given, base_dir or Path.cwd())
    try:
        if storage.exists(storage.join(uri, "adapter", CONFIG)):  # a job's output
            job: str | None = uri
            adapter = storage.join(uri, "adapter")
        elif storage.exists(storage.join(uri, CONFIG)):  # an adapter folder; in a job's output when named so
            adapter = uri
            job = uri.rsplit("/", 1)[0] if uri.rsplit("/", 1)[-1] == "adapter" else None
        else:
            raise ModelError(
                f"adapter.init_from {given}: no {CONFIG} in {uri} nor in {storage.join(uri, 'adapter')}: give a "
                "job's output (its output.uri), an adapter folder, or `models:/NAME@ALIAS`")
        folder = storage.fetch(adapter, cache_root() / _fingerprint(adapter)) if remote else Path(adapter)
        job_spec = yaml.safe_load(_read(job, "spec.yaml") or "{}") or {}
        marker = json.loads(_read(job, "_SUCCESS") or "{}")
    except OSError as e:
        raise ModelError(f"adapter.init_from {given}: {storage.describe_error(e)}") from None
    return Parent(given, folder, adapter, marker.get("run_id"), job_spec.get("base_model"), read_config(folder, given))


def _read(job: str | None, name: str) -> str | None:
    if job is None or not storage.exists(storage.join(job, name)):
        return None
    return storage.read_text(storage.join(job, name))


def _fingerprint(uri: str) -> str:
    """The remote adapter's files as they are now (ETag or size, and time): a new upload is fetched again."""
    fs, path = storage.filesystem(uri)
    fs.invalidate_cache(path)  # not what this process listed before
    infos = [fs.info(f) for name in (CONFIG, WEIGHTS) if fs.exists(f := f"{path.rstrip('/')}/{name}")]
    seen = [(i.get("ETag") or i.get("size"), str(i.get("LastModified") or i.get("mtime"))) for i in infos]
    return hashlib.sha256(json.dumps([uri, seen], default=str).encode()).hexdigest()[:16]


def read_config(folder: Path, given: str) -> dict[str, Any]:
    """The adapter's `adapter_config.json`; it must be a LoRA with its safetensors weights next to it."""
    if not (folder / WEIGHTS).is_file():
        raise ModelError(f"adapter.init_from {given}: {folder} has {CONFIG} but no {WEIGHTS}")
    config = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    if config.get("peft_type") != "LORA":
        raise ModelError(f"adapter.init_from {given}: a {config.get('peft_type')} adapter; only LoRA / DoRA ones "
                         "(PEFT peft_type LORA) can start a kubetune job")
    return config


# -- the MLflow registry -----------------------------------------------------------------------
def registry_uri(spec: JobSpec, base_dir: Path | None = None) -> str:
    """The registry `models:/` names: `tracking.mlflow_uri`, else the job's local store (trainer/tracking)."""
    if spec.tracking.mlflow_uri:
        return spec.tracking.mlflow_uri
    output = storage.output_location(spec.output.uri, spec.name, base_dir or Path.cwd())
    db = Path(output) / "mlflow.db"
    if storage.is_remote(output) or not db.is_file():
        raise ModelError(
            f"adapter.init_from {spec.adapter.init_from}: no MLflow registry to look in: set tracking.mlflow_uri to "
            "the server the parent was registered in, or give the parent job's output folder as init_from")
    return f"sqlite:///{db.resolve()}"


def parse_models_uri(given: str) -> tuple[str, str | None, str | None]:
    """`models:/NAME@ALIAS` -> (NAME, ALIAS, None); `models:/NAME/VERSION` -> (NAME, None, VERSION)."""
    rest = given.removeprefix("models:/")
    if "@" in rest and "/" not in rest and all(rest.split("@", 1)):
        name, alias = rest.split("@", 1)
        return name, alias, None
    name, _, version = rest.rpartition("/")
    if name and version.isdigit() and "/" not in name:
        return name, None, version
    raise ModelError(f"adapter.init_from {given}: not a registry version: write `models:/NAME@ALIAS` or "
                     "`models:/NAME/VERSION` (e.g. `models:/support-bot/3`)")


def from_registry(given: str, uri: str) -> Parent:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_models_uri(given)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
        adapter = adapter_version(client, mv, given)
        if adapter is not None:
            folder = _download(uri, f"{name}-v{adapter.version}", client, source=adapter.source)
            resolved = f"models:/{name}/{adapter.version}"
        else:
            folder = _download(uri, f"{mv.run_id}-adapter", client, run_id=mv.run_id)
            resolved = f"runs:/{mv.run_id}/adapter"
    except MlflowException as e:
        raise ModelError(f"adapter.init_from {given}: the registry at {uri} answered: "
                         f"{str(e).splitlines()[0][:300]}") from None
    return Parent(given, folder, resolved, mv.run_id or None, mv.tags.get("kubetune.base_model"),
                  read_config(folder, given))


def adapter_version(client: Any, mv: Any, given: str) -> Any | None:
    """The adapter version `mv` stands for: itself, or the adapter version of its run; None: the run's own
    `adapter` artifacts hold it."""
    kind = mv.tags.get("kubetune.kind")
    if kind == ADAPTER_KIND or (kind is None and not str(mv.source).startswith("models:/")):
        return mv
    if mv.run_id:
        for other in client.search_model_versions(f"name = '{mv.name}' and run_id = '{mv.run_id}'"):
            if other.tags.get("kubetune.kind") == ADAPTER_KIND:
                return other
        if any(f.path.endswith(CONFIG) for f in client.list_artifacts(mv.run_id, "adapter")):
            return None
    raise ModelError(
        f"adapter.init_from {given}: version {mv.version} of {mv.name} is a {kind or 'model'} with no adapter "
        f"registered or logged for its run: name the adapter version (`kubetune.kind: adapter`), or the job's output")


def _download(uri: str, what: str, client: Any, source: str | None = None, run_id: str | None = None) -> Path:
    """A registry version's `source`, or a run's `adapter` artifacts, in the cache (once: a version never changes)."""
    from mlflow.artifacts import download_artifacts

    key = hashlib.sha256(f"{uri}\0{what}\0{source}".encode()).hexdigest()[:16]
    target = cache_root() / f"{key}-{what}"
    done = cache_root() / f"{key}-{what}.complete"
    if not done.is_file():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        if source is not None:
            local = download_artifacts(artifact_uri=source, dst_path=str(target), tracking_uri=uri)
        else:
            local = client.download_artifacts(run_id, "adapter", str(target))
        done.write_text(os.path.relpath(local, target))
    return target / done.read_text()


# -- the checks --------------------------------------------------------------------------------
def _short(modules: Any) -> list[str] | str:
    """Target modules as the spec writes them: the module names' last parts, sorted (a regex stays a string)."""
    return modules if isinstance(modules, str) else sorted({m.rsplit(".", 1)[-1] for m in modules or []})


def _yaml(value: Any) -> str:
    """A value as the spec's YAML writes it."""
    if isinstance(value, list):
        return "[" + ", ".join(value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def mismatches(config: dict[str, Any], adapter: AdapterSpec) -> list[str]:
    """How the parent's `adapter_config.json` differs from the spec's `adapter` section, each with its fix. With
    `target_modules: all-linear`, the modules are compared once the model is built (`load_into`)."""
    fields: list[tuple[str, Any, Any]] = [  # (the spec's field, the parent's value, the spec's)
        ("r", config.get("r"), adapter.r),
        ("alpha", config.get("lora_alpha"), adapter.alpha),
        ("method", "dora" if config.get("use_dora") else "lora", adapter.method),
        ("rslora", bool(config.get("use_rslora")), adapter.rslora),
        ("target_parameters", sorted(config.get("target_parameters") or []), sorted(adapter.target_parameters or [])),
    ]
    if adapter.target_modules != "all-linear":
        fields.append(("target_modules", _short(config.get("target_modules")), _short(adapter.target_modules)))
    problems = []
    for name, theirs, ours in fields:
        if theirs != ours:
            fix = f"set `adapter.{name}: {_yaml(theirs)}`" if theirs != [] else f"leave out adapter.{name}"
            problems.append(f"adapter.{name}: the parent's is {_yaml(theirs)}, this spec's {_yaml(ours)}: {fix}")
    return problems


def same_base(theirs: str, ours: str, base_dir: Path | None = None) -> bool:
    """The same base model: the same name, or the same local file or folder (ours relative to `base_dir`)."""
    if theirs.removeprefix("file://").rstrip("/") == ours.removeprefix("file://").rstrip("/"):
        return True
    if storage.is_remote(theirs) or storage.is_remote(ours):
        return False
    here = Path(storage.local_path(ours, base_dir or Path.cwd()))
    there = Path(storage.local_path(theirs, Path.cwd()))
    return here.exists() and there.exists() and here.resolve() == there.resolve()


def check(parent: Parent, spec: JobSpec, base_dir: Path | None = None) -> None:
    """A `ModelError` (exit 2) naming every difference between the parent and the spec, with the fixes."""
    problems = mismatches(parent.config, spec.adapter)
    if parent.base_model is not None and not same_base(parent.base_model, spec.base_model, base_dir):
        problems.append(f"base_model: the parent was trained on {parent.base_model}, this spec's is "
                        f"{spec.base_model}: set `base_model: {parent.base_model}`, or start from an adapter of "
                        f"{spec.base_model}")
    if problems:
        raise ModelError(f"adapter.init_from {parent.given} ({parent.resolved}) does not fit this spec: "
                         + "; ".join(problems))


# -- the weights -------------------------------------------------------------------------------
def _modules(keys: list[str]) -> set[str]:
    return {k.split(".lora_", 1)[0] for k in keys if ".lora_" in k}


def load_into(model: Any, parent: Parent) -> None:
    """Put the parent's weights into `model`'s new adapter `default` (a PeftModel with the same LoRA settings):
    every tensor of the parent must land in it, and every one of the adapter come from the parent."""
    from peft import load_peft_weights, set_peft_model_state_dict

    weights = load_peft_weights(str(parent.folder), device="cpu")
    try:
        result = set_peft_model_state_dict(model, weights, adapter_name="default")
    except RuntimeError as e:  # a tensor of another shape
        raise ModelError(f"adapter.init_from {parent.given}: its weights do not fit this adapter "
                         f"({str(e).splitlines()[0][:300]}); its LoRA settings: {parent.config}") from None
    missing = [k for k in result.missing_keys if ".lora_" in k and ".default" in k]
    unexpected = list(result.unexpected_keys)
    if missing or unexpected:
        theirs = _short(_modules(list(weights)))
        ours = _short(_modules([n for n, _ in model.named_parameters()]))
        raise ModelError(
            f"adapter.init_from {parent.given}: the parent adapts other modules than this spec's adapter "
            f"({len(unexpected)} of its tensors have no place here, {len(missing)} of this adapter's are not in it; "
            f"e.g. {(unexpected or missing)[0]}): the parent adapts {_yaml(theirs)}, this adapter {_yaml(ours)}: set "
            f"`adapter.target_modules: {_yaml(theirs)}` (and the model the parent was trained on)")
