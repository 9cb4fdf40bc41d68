"""Verified results as versions of one registered model in the MLflow model registry.

Each verified GGUF becomes an MLflow Model (trainer/export/logged_model.py: a LoggedModel of the training
run with a `python_function` flavor that chats through llama-cpp-python, the GGUF and its Modelfile as plain
files in it) and a version of it, whose description is the model card (trainer/export/model_card.py), also
the model folder's README.md. The adapter and the merged model are logged as artifacts of the training run
(under `export/<kind>/`) and become versions with that folder as source. Every version has run_id = the
training run and is tagged with its lineage. Re-running the export for the same run finds the version
whose `kubetune.sha256` and kind match and reuses it: no duplicates. The alias (e.g. `candidate`)
moves to the newest verified GGUF of the spec's first type. No stages: they are deprecated.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from trainer.export import model_card
from trainer.export.errors import ExportError


@dataclass(frozen=True)
class Lineage:
    run_id: str
    spec_hash: str
    data_fingerprint: str
    base_model: str
    llama_cpp: str
    objective: str = "sft"  # training.objective
    parent: dict[str, str] = field(default_factory=dict)  # the adapter training started from (`parent_tags`)

    def tags(self) -> dict[str, str]:
        return {"kubetune.run_id": self.run_id, "kubetune.spec_hash": self.spec_hash,
                "kubetune.data_fingerprint": self.data_fingerprint, "kubetune.base_model": self.base_model,
                "kubetune.llama_cpp": self.llama_cpp, "kubetune.objective": self.objective} | self.parent


def parent_tags(run_tags: dict[str, str], init_from: str | None) -> dict[str, str]:
    """The lineage of `adapter.init_from` as the training run recorded it (`kubetune.parent`, `.resolved`, `.run_id`:
    trainer/model/init_from.py), or the spec's `init_from` alone when the run has none; {} without a parent."""
    found = {k: v for k, v in run_tags.items() if k == "kubetune.parent" or k.startswith("kubetune.parent.")}
    return found or ({"kubetune.parent": init_from} if init_from else {})


@dataclass(frozen=True)
class Item:
    kind: str  # "adapter" | "merged" | a GGUF type such as "q4_k_m"
    local: Path  # a file or a folder
    sha256: str
    extra_tags: dict[str, str]
    gguf: Path | None = None  # a GGUF in `local` (a folder, with its Modelfile): registered as an MLflow Model
    base: dict[str, str] | None = None  # `gguf` is a LoRA GGUF over this shared base (trainer/export/gguf_model.py)


@dataclass(frozen=True)
class Registered:
    kind: str
    version: str
    source: str
    reused: bool


class Registry:
    def __init__(self, tracking_uri: str, name: str):
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.uri = tracking_uri
        self.name = name

    def ensure_model(self, description: str) -> None:
        try:
            self.client.get_registered_model(self.name)
        except MlflowException:
            try:
                self.client.create_registered_model(self.name, description=description,
                                                    tags={"kubetune.managed": "true"})
            except MlflowException as e:
                if "already exists" not in str(e).lower() and "RESOURCE_ALREADY_EXISTS" not in str(e):
                    raise ExportError(f"cannot create registered model {self.name!r} at {self.uri}: {e}") from None

    def _existing(self, run_id: str, kind: str, sha: str):
        for mv in self.client.search_model_versions(f"name = '{self.name}' and run_id = '{run_id}'"):
            if mv.tags.get("kubetune.kind") == kind and mv.tags.get("kubetune.sha256") == sha:
                return mv
        return None

    def register(self, item: Item, lineage: Lineage, card: model_card.Facts | None = None, step: int = 0) -> Registered:
        """One version of `item`; a GGUF item (`item.gguf`) as an MLflow Model with `card` as its model card, the
        training run's metrics at `step` (its last) linked to it."""
        found = self._existing(lineage.run_id, item.kind, item.sha256)
        if found is not None:
            return Registered(item.kind, found.version, found.source, reused=True)
        if item.gguf is not None:
            return self._register_gguf(item, lineage, card, step)
        run = self.client.get_run(lineage.run_id)
        artifact_path = f"export/{item.kind}"
        source = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
        if item.local.is_dir():
            self.client.log_artifacts(lineage.run_id, str(item.local), artifact_path)
        else:
            self.client.log_artifact(lineage.run_id, str(item.local), artifact_path)
        tags = lineage.tags() | {"kubetune.kind": item.kind, "kubetune.sha256": item.sha256} | item.extra_tags
        try:
            mv = self.client.create_model_version(self.name, source=source, run_id=lineage.run_id, tags=tags,
                                                  description=f"{item.kind} of run {lineage.run_id}")
        except MlflowException as e:
            raise ExportError(f"MLflow refused version {item.kind} of {self.name!r}: {e}") from None
        return Registered(item.kind, mv.version, source, reused=False)

    def _register_gguf(self, item: Item, lineage: Lineage, card: model_card.Facts | None, step: int) -> Registered:
        from trainer.export import logged_model

        assert item.gguf is not None
        tags = lineage.tags() | {"kubetune.kind": item.kind, "kubetune.sha256": item.sha256} | item.extra_tags
        modelfile = item.local / "Modelfile"
        try:
            logged = logged_model.log_gguf(self.client, lineage.run_id, f"{self.name}-{item.kind}", item.gguf,
                                           modelfile if modelfile.is_file() else None, step, tags, item.base)
            mv = self.client.create_model_version(self.name, source=logged.uri, run_id=lineage.run_id, tags=tags,
                                                  description=f"{item.kind} of run {lineage.run_id}",
                                                  model_id=logged.model_id)
            if card is not None:
                text = model_card.render(replace(card, version=str(mv.version)))
                logged_model.add_card(self.client, logged.model_id, text)
                self.client.update_model_version(self.name, mv.version, description=model_card.description(text))
        except MlflowException as e:
            raise ExportError(f"MLflow refused version {item.kind} of {self.name!r}: {e}") from None
        return Registered(item.kind, mv.version, logged.uri, reused=False)

    def find(self, tag: str, value: str):
        """The oldest version of this model tagged `tag` = `value` (by any run), or None."""
        found = [mv for mv in self.client.search_model_versions(f"name = '{self.name}'") if mv.tags.get(tag) == value]
        return min(found, key=lambda mv: int(mv.version), default=None)

    def settle(self, tag: str, value: str, mine: Registered) -> Registered:
        """`mine` just registered as the one version tagged `tag` = `value`: when jobs raced (the matrix cells of one
        base exporting at once), every one of them keeps the oldest such version and deletes its own newer one."""
        oldest = self.find(tag, value)
        if oldest is None or oldest.version == mine.version:
            return mine
        with contextlib.suppress(MlflowException):  # already gone, or not ours: the oldest is what is used either way
            self.client.delete_model_version(self.name, mine.version)
        return Registered(mine.kind, oldest.version, oldest.source, reused=True)

    def register_file(self, kind: str, file: Path, source: str | None, run_id: str, tags: dict[str, str]) -> Registered:
        """A version of one file: `source` as it is (an object-store URI; nothing copied), or, None, `file` logged as
        an artifact of `run_id` (a tracking server refuses local paths as sources)."""
        if source is None:
            self.client.log_artifact(run_id, str(file), f"export/{kind}")
            source = f"{self.client.get_run(run_id).info.artifact_uri.rstrip('/')}/export/{kind}"
        try:
            mv = self.client.create_model_version(self.name, source=source, run_id=run_id, tags=tags,
                                                  description=f"{kind}: {file.name}")
        except MlflowException as e:
            raise ExportError(f"MLflow refused version {kind} of {self.name!r}: {e}") from None
        return Registered(kind, mv.version, source, reused=False)

    def log_metrics(self, run_id: str, metrics: dict[str, float]) -> None:
        """Metrics of the export (e.g. `export.q4_k_m.rouge_l`) into the training run, next to its own."""
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        if metrics:
            self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.name, alias, version)
