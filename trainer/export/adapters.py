"""`export.mode: adapters | both`: the shared base GGUF per type (trainer/export/shared_base.py), the job's adapter
as a LoRA GGUF against it, the adapter gate (trainer/export/adapter_verify.py), runtimes and registration.

Layout under `<output>/export/`: `adapters/<type>/<job>-lora.gguf` with its Ollama `Modelfile` (`FROM` the
shared base, `ADAPTER` the LoRA GGUF) and `README.md` (the llama.cpp command line), `verify-adapters.json` /
`.txt`, and with `export.lmstudio_publisher` `lmstudio/<publisher>/<base>/` holding the base GGUFs and the
adapter side by side. The base GGUFs themselves stay in the shared store, once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from trainer import say as out
from trainer import storage
from trainer.export import say
from trainer.export.errors import ExportError


def base_slug(base_model: str) -> str:
    """A registered-model-name-friendly short name of the base (`openai/gpt-oss-20b` -> `gpt-oss-20b`)."""
    name = base_model.rstrip("/").rsplit("/", 1)[-1].removesuffix(".gguf")
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.").lower() or "base"


class AdapterExport:
    """`Export`'s steps for adapter mode; uses `spec`, `cfg`, `output`, `work`, `out`, `adapter_dir` ..."""

    def adapter_export(self) -> bool:
        """Shared bases, the adapter GGUF, the gate and the runtimes' files; True when every adapter passed."""
        from trainer.export import merge, shared_base

        tokenizer_hash = shared_base.tree_sha256(self.tokenizer_dir)
        self.phase("hashing the base model")
        self.base_key = shared_base.BaseKey(shared_base.base_identity(self.spec.base_model, self.base_dir),
                                            self.spec.model.dtype, self.spec.model.quantization, tokenizer_hash,
                                            self.llama_cpp)
        self.bases_store = shared_base.store_uri(self.cfg.bases_uri, self.output, self.base_dir)
        missing = [q for q in self.cfg.gguf if shared_base.read_marker(self.bases_store,
                                                                        self.base_key.key(q)) is None]
        self.phase("loading the base model")
        self.base, self.hf_base = merge.save_base(self.spec, self.tokenizer_dir, self.work / "base", self.base_dir,
                                                  weights=bool(missing))
        self.bases = self.shared_bases()
        self.adapter_file = self.convert_lora()
        self.adapter_report = self.adapter_gate()
        self.adapter_runtimes()
        return self.adapter_report.passed

    def evaluate_adapters(self) -> None:
        """`eval.metrics` on each adapter GGUF, applied by llama.cpp over its shared base as users run it; the means
        become tags of its registry version (`kubetune.eval.<metric>`) and `export.lora-<type>.*` run metrics."""
        if not self.spec.eval.metrics:
            return
        from trainer.eval.run import evaluate_gguf

        for q, b in self.bases.items():
            self._record(f"lora-{q}", evaluate_gguf(b.local, self.base.tokenizer, self.spec, base_dir=self.base_dir,
                                                    label=f"lora-{q}", lora=self.adapter_file))

    def shared_bases(self) -> dict[str, Any]:
        from trainer.export import gguf, shared_base
        from trainer.spec.quants import FLOAT_FOR_DTYPE, QUANTS

        logs, made = self.work / "logs", {}
        source = "f32" if "f32" in self.cfg.gguf else FLOAT_FOR_DTYPE[self.spec.model.dtype]
        name = base_slug(self.spec.base_model)

        def make(q: str) -> Path:
            if source not in made:
                self.phase(f"converting the base to {source}")
                made[source] = gguf.convert(self.base.path, self.work / "bases" / f"{name}-{source}.gguf", source,
                                            logs / f"convert-base-{source}.log").path
            if q not in made:
                self.phase(f"quantizing the base to {q}")
                made[q] = gguf.quantize(made[source], self.work / "bases" / f"{name}-{q}.gguf", q,
                                        log=logs / f"quantize-base-{q}.log").path
            return made[q]

        bases = {}
        for q in self.cfg.gguf:
            key = self.base_key.key(q)
            inputs = {"base_model": self.spec.base_model, **vars(self.base_key), "quant": q}
            try:
                bases[q] = shared_base.ensure(self.bases_store, key, q, inputs, lambda q=q: make(q),
                                              self.work / "inputs" / "bases")
            except OSError as e:
                raise ExportError(f"shared base {q}: {e}") from None
            done = "reused" if bases[q].reused else f"written in {bases[q].seconds:.1f}s"
            say(f"shared base {q}: {bases[q].file} ({bases[q].local.stat().st_size / 2**20:.1f} MiB) {done}")
            if QUANTS[q].step == "quantize" and not bases[q].reused:
                say(f"shared base {q}: quantized from {source} without an importance matrix (it serves every job)")
        return bases

    def convert_lora(self) -> Path:
        from trainer.export import gguf

        self.phase("converting the adapter")
        f = gguf.convert_adapter(self.adapter_dir, self.base.path, self.work / "lora" / f"{self.spec.name}-lora.gguf",
                                 self.work / "logs" / "convert-adapter.log")
        say(f"adapter GGUF written in {f.seconds:.1f}s ({f.size / 2**20:.2f} MiB)")
        return f.path

    def adapter_gate(self):
        """Gates the adapter GGUF over each shared base. The HF base (`hf_base`) is only held for the references: it
        is freed before llama.cpp loads a GGUF (the export pod's memory request counts on it: trainer/spec/export.py)."""
        import gc

        from peft import PeftModel

        from trainer.data import conversations
        from trainer.export import adapter_verify, verify
        from trainer.spec.quants import QUANTS

        split = "eval" if self.spec.data.eval else "train"
        self.golden = conversations(self.spec, split, self.cfg.verify.golden_conversations, base_dir=self.base_dir)
        if not self.golden:
            raise ExportError(f"data.{split} has no usable conversation to verify the export on")
        tok, eos = self.base.tokenizer, self.base.eos
        model, self.hf_base = self.hf_base, None
        try:
            adapted = PeftModel.from_pretrained(model, str(self.adapter_dir))
        except (ValueError, KeyError, RuntimeError) as e:
            raise ExportError(f"the adapter in {self.adapter_dir} does not fit base model: {e}") from None
        golden, golden_base = adapter_verify.references(adapted, tok, self.golden)
        del adapted, model
        gc.collect()
        files = []
        for q, base in self.bases.items():
            gate = self.cfg.verify.gate(q)
            self.phase(f"verifying the adapter over the {q} base")
            floor = None if QUANTS[q].step == "convert" else \
                adapter_verify.verify_adapter(base.local, None, golden_base, tok, eos, gate, None, q)
            files.append(adapter_verify.verify_adapter(base.local, self.adapter_file, golden, tok, eos, gate, floor, q))
        report = verify.Report(files, len(self.golden))
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "verify-adapters.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        (self.out / "verify-adapters.txt").write_text("adapters: " + report.render() + "\n")
        out.text("adapters: " + report.render())
        return report

    def adapter_runtimes(self) -> None:
        from trainer.export import runtimes

        passed = {f.quant for f in self.adapter_report.files if f.passed}
        self.adapter_dirs: dict[str, Path] = {}
        lora = self.adapter_file.name
        for q, base in self.bases.items():
            folder = self.out / "adapters" / q
            folder.mkdir(parents=True, exist_ok=True)
            _link(self.adapter_file, folder / lora)
            self.adapter_dirs[q] = folder
            base_ref = base.file if not storage.is_remote(base.file) else Path(base.file).name
            (folder / "README.md").write_text(usage(base.file, base_ref, lora, self.spec.name, q))
            if self.cfg.ollama and q in passed:
                text, why = runtimes.modelfile(str(base_ref), self.base.tokenizer, self.base.eos, self.golden,
                                               runtimes.default_system(self.spec.data), adapter=lora)
                (folder / "Modelfile").write_text(text)
                if why:
                    say(f"{q} adapter: Modelfile without TEMPLATE: {why}")
        if self.cfg.lmstudio_publisher and passed:
            files = [*(self.bases[q].local for q in self.bases if q in passed), self.adapter_file]
            runtimes.lmstudio_layout(files, self.out / "lmstudio", self.cfg.lmstudio_publisher,
                                     base_slug(self.spec.base_model))

    def adapter_marker(self, registered: list[Any]) -> dict[str, Any]:
        """What `_SUCCESS` lists for adapter mode (`launch status` shows it: launcher/exports.py): each base and
        each adapter GGUF with its gate figures and registered version (None: not registered)."""
        versions = {r.kind: str(r.version) for r in registered}

        def version(name: str | None, kind: str) -> dict[str, str] | None:
            return {"name": name, "version": versions[kind]} if name and kind in versions else None

        gate = {f.quant: f for f in self.adapter_report.files}
        return {"mode": self.cfg.mode, "adapter_gguf": self.adapter_file.name,
                "bases": {q: {"file": b.file, "sha256": b.sha256, "key": b.key, "reused": b.reused,
                              "registered": version(getattr(self, "base_registry", None), f"base-{q}")}
                          for q, b in self.bases.items()},
                "adapters": {q: {"file": f"adapters/{q}/{self.adapter_file.name}", "passed": gate[q].passed,
                                 "top1": gate[q].top1, "kl": gate[q].kl,
                                 "registered": version(getattr(self, "registry_name", None), f"lora-{q}")}
                             for q in self.bases}}

    def print_adapter_usage(self) -> None:
        q = self.cfg.gguf[0]
        folder = storage.join(self.output, "export", "adapters", q)
        say(f"run it with llama.cpp:  llama-cli -m {self.bases[q].file} --lora {folder}/{self.adapter_file.name} -cnv"
            + ("   (download both first)" if storage.is_remote(folder) else ""))
        if self.cfg.ollama:
            say(f"run it with Ollama:     ollama create {self.spec.name} -f {folder}/Modelfile")


def usage(base_uri: str, base_ref: str | Path, lora: str, name: str, quant: str) -> str:
    """The README next to an adapter GGUF: where its base is, and each runtime's command line."""
    fetch = (f"\nDownload the base first (it is shared by every adapter of this base; fetch it once):\n\n"
             f"    aws s3 cp {base_uri} .\n") if storage.is_remote(base_uri) else ""
    return (f"# {name}: a LoRA adapter GGUF over the shared {quant} base\n\nBase: `{base_uri}`\n{fetch}\n"
            f"llama.cpp (the LoRA is applied at load; several `--lora` files may be given):\n\n"
            f"    llama-cli -m {base_ref} --lora {lora} -cnv\n"
            f"    llama-server -m {base_ref} --lora {lora}\n\n"
            f"Ollama (the Modelfile here says `FROM` the base and `ADAPTER` this file):\n\n"
            f"    ollama create {name} -f Modelfile && ollama run {name}\n")


def _link(src: Path, dest: Path) -> None:
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)
    except OSError:
        shutil.copy2(src, dest)


class AdapterRegistering:
    """`Export`'s registry step for adapter mode: the shared bases once, each adapter GGUF tagged with its base."""

    def register_bases(self, uri: str) -> dict[str, Any]:
        from trainer.export import register

        registry = register.Registry(uri, f"{base_slug(self.spec.base_model)}-base-{self.base_key.family()[:8]}")
        registry.ensure_model(f"shared base GGUFs of {self.spec.base_model} for LoRA GGUFs (kubetune export.mode "
                              f"adapters); identity {self.base_key.identity}")
        done = {}
        for q, b in self.bases.items():
            found = registry.find("kubetune.base.key", b.key)
            if found is not None:
                done[q] = register.Registered(f"base-{q}", found.version, found.source, reused=True)
            else:
                tags = {"kubetune.kind": "base", "kubetune.quant": q, "kubetune.sha256": b.sha256,
                        "kubetune.base.key": b.key, "kubetune.base_model": self.spec.base_model,
                        "kubetune.base.identity": self.base_key.identity, "kubetune.llama_cpp": self.llama_cpp,
                        "kubetune.file": b.file, "kubetune.run_id": self.marker["run_id"]}
                mine = registry.register_file(f"base-{q}", b.local, b.file if storage.is_remote(b.file) else None,
                                              self.marker["run_id"], tags)
                done[q] = registry.settle("kubetune.base.key", b.key, mine)
            say(f"registered {registry.name} version {done[q].version} (base {q})"
                + (" — already there" if done[q].reused else ""))
        self.base_registry = registry.name
        return done

    def register_adapters(self) -> list[Any]:
        from trainer.export import register, shared_base
        from trainer.export.gguf import sha256
        from trainer.spec.io import spec_hash

        reg = self.cfg.register
        if reg is None:
            return []
        uri = self.tracking_uri()
        bases = self.register_bases(uri)
        registry = register.Registry(uri, reg.name or self.spec.name)
        registry.ensure_model(f"kubetune exports of job {self.spec.name} (base {self.spec.base_model})")
        run_tags = registry.client.get_run(self.marker["run_id"]).data.tags
        lineage = register.Lineage(self.marker["run_id"], self.marker.get("spec_hash") or spec_hash(self.spec),
                                   self.data_fingerprint, self.spec.base_model, self.llama_cpp,
                                   self.spec.training.objective, register.parent_tags(run_tags, self.spec.adapter.init_from))
        items = []
        if self.cfg.mode == "adapters" and reg.register_adapter:  # `both`: the merged steps register it
            items.append(register.Item("adapter", self.adapter_dir, shared_base.tree_sha256(self.adapter_dir), {}))
        by_quant, digest = {f.quant: f for f in self.adapter_report.files}, sha256(self.adapter_file)
        for q, folder in self.adapter_dirs.items():
            r, b = by_quant[q], self.bases[q]
            items.append(register.Item(f"lora-{q}", folder, digest, {
                "kubetune.quant": q, "kubetune.file": self.adapter_file.name,
                "kubetune.verify.passed": str(r.passed).lower(), "kubetune.verify.top1": f"{r.top1:.4f}",
                "kubetune.verify.kl": f"{r.kl:.6f}", "kubetune.base.name": self.base_registry,
                "kubetune.base.version": str(bases[q].version), "kubetune.base.sha256": b.sha256,
                "kubetune.base.key": b.key, "kubetune.base.file": b.file,
                **(self.evals[f"lora-{q}"].tags() if f"lora-{q}" in self.evals else {})},
                gguf=folder / self.adapter_file.name,  # an MLflow Model: base + LoRA (trainer/export/gguf_model.py)
                base={"base_source": bases[q].source, "base_file": Path(b.file).name, "base_sha256": b.sha256}))
        done = [registry.register(item, lineage) for item in items]
        registry.log_metrics(self.marker["run_id"], {f"export.{kind}.{k}": v for kind, result in self.evals.items()
                                                     if kind.startswith("lora-") for k, v in result.metrics("").items()})
        for d in done:
            say(f"registered {registry.name} version {d.version} ({d.kind})" + (" — already there" if d.reused else ""))
        if reg.alias and self.cfg.mode == "adapters":
            first = next(d for d in done if d.kind == f"lora-{self.cfg.gguf[0]}")
            registry.set_alias(reg.alias, first.version)
            say(f"alias {reg.alias!r} -> {registry.name} version {first.version} ({first.kind})")
        self.registry_name = registry.name
        return [*bases.values(), *done]
