"""The export job's last steps (trainer/export/run.py's `Export`): register what passed the gate in the MLflow
registry with its lineage, publish `<output>/export/` with `_SUCCESS` last, and say how to run the result.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from trainer import storage
from trainer.export import say
from trainer.export.errors import ExportError
from trainer.spec.io import spec_hash


class Publishing:
    """`Export`'s registry and output steps; they use what its earlier steps made (`marker`, `merged`, `files`,
    `report`, `evals` ...)."""

    # -- registry ----------------------------------------------------------------------------
    def tracking_uri(self) -> str:
        uri = self.spec.tracking.mlflow_uri or self.marker.get("tracking_uri")
        if not uri or (uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists()):
            raise ExportError("no MLflow server to register in: set tracking.mlflow_uri (training ran with a local "
                              f"store {uri} this job cannot reach), or set export.register: null")
        return uri

    def register(self) -> list[Any]:
        from trainer.export import register
        from trainer.export.gguf import sha256
        from trainer.spec.quants import QUANTS

        reg = self.cfg.register
        if reg is None:
            return []
        registry = register.Registry(self.tracking_uri(), reg.name or self.spec.name)
        registry.ensure_model(f"kubetune exports of job {self.spec.name} (base {self.spec.base_model})")
        run_tags = registry.client.get_run(self.marker["run_id"]).data.tags  # the parent adapter, as training found it
        lineage = register.Lineage(self.marker["run_id"], self.marker.get("spec_hash") or spec_hash(self.spec),
                                   self.data_fingerprint, self.spec.base_model, self.llama_cpp,
                                   self.spec.training.objective, register.parent_tags(run_tags, self.spec.adapter.init_from))
        items = []
        merged_tags = self.evals["merged"].tags() if "merged" in self.evals else {}  # the adapter on its base
        if reg.register_adapter:
            items.append(register.Item("adapter", self.adapter_dir, _dir_sha256(self.adapter_dir), merged_tags))
        if reg.register_merged:
            items.append(register.Item("merged", self.merged.path, _dir_sha256(self.merged.path), merged_tags))
        by_quant = {f.quant: f for f in self.report.files}
        for q, f in self.files.items():
            r = by_quant[q]
            items.append(register.Item(q, self.gguf_dirs[q], sha256(f.path), {
                "kubetune.quant": q, "kubetune.file": f.path.name, "kubetune.verify.passed": str(r.passed).lower(),
                "kubetune.verify.top1": f"{r.top1:.4f}", "kubetune.verify.kl": f"{r.kl:.6f}",
                **({"kubetune.imatrix": self.imatrix_note} if QUANTS[q].step == "quantize" else {}),
                **(self.evals[q].tags() if q in self.evals else {}),
            }, gguf=f.path))
        step = int(self.marker.get("steps") or 0)  # the run's metrics at its last step are linked to each GGUF model
        done = [registry.register(item, lineage, self.card_facts(registry, item, lineage) if item.gguf else None, step)
                for item in items]
        registry.log_metrics(self.marker["run_id"], {f"export.{kind}.{k}": v for kind, result in self.evals.items()
                                                     if not kind.startswith("lora-")  # register_adapters' own
                                                     for k, v in result.metrics("").items()})
        for d in done:
            say(f"registered {registry.name} version {d.version} ({d.kind})" + (" — already there" if d.reused else ""))
        first = next(d for d in done if d.kind == self.cfg.gguf[0])
        if reg.alias:
            registry.set_alias(reg.alias, first.version)
            say(f"alias {reg.alias!r} -> {registry.name} version {first.version} ({first.kind})")
        self.registry_name = registry.name
        return done

    def card_facts(self, registry: Any, item: Any, lineage: Any) -> Any:
        """What the model card of a GGUF version says (trainer/export/model_card.py), less its version number."""
        from trainer.export.model_card import Facts

        metrics = registry.client.get_run(lineage.run_id).data.metrics
        training = {k: self.marker.get(k) for k in ("steps", "tokens_trained", "final_loss", "train_loss")}
        assert item.gguf is not None
        return Facts(
            name=registry.name, version="", kind=item.kind, file=item.gguf.name, sha256=item.sha256,
            size_bytes=item.gguf.stat().st_size, base_model=lineage.base_model, run_id=lineage.run_id,
            spec_hash=lineage.spec_hash, data_fingerprint=lineage.data_fingerprint, llama_cpp=lineage.llama_cpp,
            objective=lineage.objective, parent=lineage.parent,
            modelfile=(item.local / "Modelfile").is_file(), data=self._output_json("data_stats.json"),
            training=training | {"eval_loss": metrics.get("eval_loss")}, gate=self.report.as_dict(),
            samples=self._output_json("samples.json"), alias=self.cfg.register.alias if self.cfg.register else None)

    def _output_json(self, name: str) -> dict[str, Any]:
        """A JSON file training left in the output folder ({} when it is not there)."""
        path = storage.join(self.output, name)
        return json.loads(storage.read_text(path)) if storage.exists(path) else {}

    # -- outputs -----------------------------------------------------------------------------
    def publish(self, passed: bool, registered: list[Any] = ()) -> None:
        if self.cfg.register is not None and self.cfg.register.register_merged and passed:
            shutil.copytree(self.merged.path, self.out / "merged")
        target = storage.join(self.output, "export")
        storage.remove_tree(target)  # a re-export replaces the last one: no stale GGUFs of other types stay
        storage.publish_dir(self.out, target)
        marker = {"passed": passed, "run_id": self.marker.get("run_id"), "llama_cpp": self.llama_cpp,
                  "files": {q: f.path.name for q, f in self.files.items()},
                  "registered": [{"kind": r.kind, "version": r.version, "source": r.source} for r in registered],
                  "registered_name": getattr(self, "registry_name", None)}  # the job's; a shared base has its own
        if self.cfg.mode != "merged":
            marker |= self.adapter_marker(registered)
        if passed:
            storage.write_text(storage.join(target, "_SUCCESS"), json.dumps(marker, indent=2) + "\n")

    def print_usage(self, registered: list[Any]) -> None:
        if self.cfg.mode != "merged":
            self.print_adapter_usage()
            if self.cfg.mode == "adapters":
                return
        q = self.cfg.gguf[0]
        name = self.files[q].path.name
        folder = storage.join(self.output, "export", "gguf", q)
        if storage.is_remote(folder):
            say(f"download it:            aws s3 cp --recursive {folder}/ {q}/   (or any S3 client)")
            folder = q
        say(f"run it with llama.cpp:  llama-cli -m {folder}/{name} -cnv")
        if self.cfg.ollama:
            say(f"run it with Ollama:     ollama create {self.spec.name} -f {folder}/Modelfile && ollama run {self.spec.name}")
        if registered and self.cfg.register and self.cfg.register.alias:
            uri = f"models:/{self.registry_name}@{self.cfg.register.alias}"
            say(f"registry:               {uri}  (an MLflow Model: mlflow.pyfunc.load_model(\"{uri}\"))")
            say(f"serve it:               mlflow models serve -m {uri} --env-manager local -p 5001")


def _dir_sha256(folder: Path) -> str:
    from trainer.export.gguf import sha256

    h = hashlib.sha256()
    for p in sorted(x for x in folder.rglob("*") if x.is_file()):
        h.update(p.relative_to(folder).as_posix().encode() + b"\0" + sha256(p).encode())
    return h.hexdigest()
