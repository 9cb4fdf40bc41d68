"""The export job: wait for training's `_SUCCESS` -> merge -> GGUF -> quantize -> verify -> register.

    python -m trainer.export --spec job.yaml [--set export.gguf=[q8_0]] [--base-dir DIR]

Everything lands under `<output.uri>/export/`: `gguf/<type>/<name>-<type>.gguf` with its Ollama
`Modelfile`, `adapter.gguf` (optional), `lmstudio/` (optional), `merged/` (when registered),
`verify.json` / `verify.txt`, and `_SUCCESS` last. Only when every GGUF passes the gate is
anything registered; otherwise the job exits 1 with the report saying what failed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from trainer import say as out
from trainer import storage
from trainer.export import say
from trainer.export.adapters import AdapterExport, AdapterRegistering
from trainer.export.errors import ExportError
from trainer.export.publish import Publishing
from trainer.export.wait import wait_for_success
from trainer.spec.errors import UsageError
from trainer.spec.io import SpecError, load_spec, spec_arguments
from trainer.spec.job import JobSpec
from trainer.tracking.progress import Publisher, payload


def output_uri(spec: JobSpec, base_dir: Path) -> str:
    return storage.output_location(spec.output.uri, spec.name, base_dir)


class Export(AdapterExport, AdapterRegistering, Publishing):
    """One export, step by step (`run`); the registry and output steps are in trainer/export/publish.py."""

    def __init__(self, spec: JobSpec, base_dir: Path):
        assert spec.export is not None
        self.spec, self.cfg, self.base_dir = spec, spec.export, base_dir
        self.output = output_uri(spec, base_dir)
        self.work = Path(os.environ.get("KUBETUNE_WORK_DIR") or tempfile.gettempdir()) / "kubetune-export" / spec.name
        self.out = self.work / "export"
        self.imatrix_note = "none"
        self.evals: dict[str, Any] = {}
        self.progress = Publisher()  # where `launch status` reads the phase (trainer/tracking/progress.py)

    def phase(self, detail: str) -> None:
        self.progress.publish(payload("export", detail=detail))

    def run(self) -> int:
        try:
            return self.steps()
        finally:
            self.progress.close()  # its last phase sent past the rate limit

    def steps(self) -> int:
        from trainer.export import gguf

        self.llama_cpp = gguf.llama_cpp_version()  # fail early when the pinned llama.cpp is missing
        self.phase("waiting for training to succeed")
        self.marker = wait_for_success(self.output, self.cfg.wait_minutes, job=os.environ.get("KUBETUNE_JOB_NAME"))
        shutil.rmtree(self.work, ignore_errors=True)
        self.out.mkdir(parents=True)
        self.fetch()
        self.files, passed, merged = {}, True, self.cfg.mode != "adapters"
        if merged:
            self.phase("merging the adapter")
            self.merge()
            self.convert()
            report = self.verify()
            self.runtimes(report)
            passed = report.passed
        if self.cfg.mode != "merged":
            passed = self.adapter_export() and passed
        if not passed:
            self.phase("gate failed: nothing registered")
            self.publish(passed=False)
            which = ["verify.txt"] * merged + ["verify-adapters.txt"] * (self.cfg.mode != "merged")
            say("the gate failed: nothing registered. Report: "
                + ", ".join(storage.join(self.output, "export", w) for w in which))
            return 1
        self.phase("evaluating")
        self.evaluate()
        self.phase("registering")
        registered = (self.register() if merged else []) + (
            self.register_adapters() if self.cfg.mode != "merged" else [])
        self.publish(passed=True, registered=registered)
        self.phase("done")
        self.print_usage(registered)
        shutil.rmtree(self.work, ignore_errors=True)
        return 0

    # -- inputs ------------------------------------------------------------------------------
    def fetch(self) -> None:
        cache = self.work / "inputs"
        self.adapter_dir = storage.fetch(storage.join(self.output, "adapter"), cache)
        self.tokenizer_dir = storage.fetch(storage.join(self.output, "tokenizer"), cache)
        stats = storage.join(self.output, "data_stats.json")
        blob = storage.read_text(stats).encode() if storage.exists(stats) else b""
        self.data_fingerprint = hashlib.sha256(blob).hexdigest()[:16] if blob else "unknown"

    # -- merge -------------------------------------------------------------------------------
    def merge(self) -> None:
        from trainer.export.merge import merge

        self.merged = merge(self.spec, self.adapter_dir, self.tokenizer_dir, self.work / "merged", self.base_dir)
        note = f"; QLoRA: merged weights differ by {self.merged.qlora_weight_delta:.2e} (relative) from a merge onto " \
               "the original base" if self.merged.qlora_weight_delta is not None else ""
        say(f"merged the adapter into {self.spec.base_model} ({self.spec.model.dtype}) in "
            f"{self.merged.seconds:.1f}s; stop tokens {self.merged.eos}{note}")

    # -- convert and quantize ----------------------------------------------------------------
    def convert(self) -> None:
        from trainer.export import gguf
        from trainer.spec.quants import FLOAT_FOR_DTYPE, QUANTS

        wanted = self.cfg.gguf
        floats = [q for q in wanted if QUANTS[q].step == "convert"]
        source = "f32" if "f32" in floats else FLOAT_FOR_DTYPE[self.spec.model.dtype]
        logs = self.work / "logs"
        self.files: dict[str, gguf.GgufFile] = {}
        made: dict[str, gguf.GgufFile] = {}
        for q in dict.fromkeys([source, *floats]):
            self.phase(f"converting {q}")
            made[q] = gguf.convert(self.merged.path, self.work / "gguf" / f"{self.spec.name}-{q}.gguf", q,
                                   logs / f"convert-{q}.log")
            say(f"{q}: converted in {made[q].seconds:.1f}s ({made[q].size / 2**20:.1f} MiB)")
        imatrix = self.importance(made[source].path) if any(q not in made for q in wanted) else None
        weighted = " with the importance matrix" if imatrix is not None else ""
        for q in wanted:
            if q in made:
                self.files[q] = made[q]
                continue
            self.phase(f"quantizing {q}")
            self.files[q] = gguf.quantize(made[source].path, self.work / "gguf" / f"{self.spec.name}-{q}.gguf", q,
                                          imatrix=imatrix, log=logs / f"quantize-{q}.log")
            say(f"{q}: quantized from {source}{weighted} in {self.files[q].seconds:.1f}s "
                f"({self.files[q].size / 2**20:.1f} MiB)")
        self.adapter_gguf = None
        if self.cfg.adapter_gguf:
            self.adapter_gguf = gguf.convert_adapter(self.adapter_dir, self.merged.path, self.out / "adapter.gguf",
                                                     logs / "convert-adapter.log")
            say(f"adapter GGUF written in {self.adapter_gguf.seconds:.1f}s")

    def importance(self, float_gguf: Path):
        """The importance matrix the quantizer weighs by (export.imatrix), or None."""
        from trainer.export import imatrix

        cfg = self.cfg.imatrix
        self.imatrix_note = "none"
        if cfg is None:
            return None
        if cfg.file:
            local = storage.fetch(cfg.file, self.work / "inputs" / "imatrix") if storage.is_remote(cfg.file) \
                else Path(cfg.file) if Path(cfg.file).is_absolute() else self.base_dir / cfg.file
            found = imatrix.read(local)
            self.imatrix_note = f"file {cfg.file}"
            say(f"importance matrix: {len(found)} tensors from {cfg.file}")
            return found
        from trainer.data import conversations

        started = time.perf_counter()
        convs = conversations(self.spec, "train", cfg.conversations, base_dir=self.base_dir)
        if not convs:
            raise ExportError("data.train has no usable conversation to compute the importance matrix on")
        tok = self.merged.tokenizer
        rows = [tok(tok.apply_chat_template(c, tokenize=False), add_special_tokens=False).input_ids
                [: self.spec.data.max_seq_len] for c in convs]
        found, unmapped = imatrix.compute(self.hf_model(), rows, float_gguf, f"{self.spec.name}: data.train",
                                          chunk_size=min(512, self.spec.data.max_seq_len))
        imatrix.write(found, self.out / "imatrix.gguf")
        tokens = sum(len(r) for r in rows)
        self.imatrix_note = f"computed on {len(convs)} conversations ({tokens} tokens)"
        skipped = f"; not in the GGUF: {', '.join(unmapped)}" if unmapped else ""
        say(f"importance matrix: {len(found)} tensors over {len(convs)} training conversations ({tokens} tokens) in "
            f"{time.perf_counter() - started:.1f}s{skipped}")
        return found

    def hf_model(self):
        """The merged model in float32, loaded once for the importance matrix and the gate."""
        if getattr(self, "_hf", None) is None:
            import torch
            from transformers import AutoModelForCausalLM

            self._hf = AutoModelForCausalLM.from_pretrained(self.merged.path, dtype=torch.float32)
        return self._hf

    # -- the gate ----------------------------------------------------------------------------
    def verify(self):
        from trainer.data import conversations
        from trainer.export import verify

        split = "eval" if self.spec.data.eval else "train"
        golden = conversations(self.spec, split, self.cfg.verify.golden_conversations, base_dir=self.base_dir)
        if not golden:
            raise ExportError(f"data.{split} has no usable conversation to verify the export on")
        self.golden = golden
        ref = verify.reference(self.hf_model(), self.merged.tokenizer, golden)
        self.evaluate_merged()
        self._hf = None
        files = []
        for q, f in self.files.items():
            gate = self.cfg.verify.gate(q)
            self.phase(f"verifying {q}")
            files.append(verify.verify_file(f.path, q, self.merged.tokenizer, self.merged.eos, ref,
                                            gate.min_top1, gate.max_kl))
        report = verify.Report(files, len(golden))
        verify.write_report(report, self.out)
        out.text(report.render())
        self.report = report
        return report

    # -- runtimes ----------------------------------------------------------------------------
    def runtimes(self, report) -> None:
        from trainer.export import runtimes

        passed = {f.quant for f in report.files if f.passed}
        self.gguf_dirs: dict[str, Path] = {}
        for q, f in self.files.items():
            folder = self.out / "gguf" / q
            folder.mkdir(parents=True, exist_ok=True)
            target = folder / f.path.name
            shutil.move(f.path, target)
            self.files[q] = type(f)(q, target, f.seconds)
            self.gguf_dirs[q] = folder
            if self.cfg.ollama and q in passed:
                text, why = runtimes.modelfile(target.name, self.merged.tokenizer, self.merged.eos, self.golden,
                                               runtimes.default_system(self.spec.data))
                (folder / "Modelfile").write_text(text)
                if why:
                    say(f"{q}: Modelfile without TEMPLATE: {why}")
        if self.cfg.lmstudio_publisher and passed:
            runtimes.lmstudio_layout([self.files[q].path for q in self.files if q in passed], self.out / "lmstudio",
                                     self.cfg.lmstudio_publisher, self.spec.name)

    # -- task metrics --------------------------------------------------------------------------
    def evaluate_merged(self) -> None:
        """`eval.metrics` (and held-out loss) of the merged model: the reference each GGUF's metrics compare to."""
        if not self.spec.eval.metrics:
            return
        from trainer.eval.run import evaluate_hf

        self._record("merged", evaluate_hf(self.hf_model(), self.merged.tokenizer, self.spec, base_dir=self.base_dir))

    def evaluate(self) -> None:
        """`eval.metrics` on each verified GGUF through llama.cpp; the means become registry tags."""
        if not self.spec.eval.metrics:
            return
        from trainer.eval.run import evaluate_gguf

        for q, f in self.files.items():
            self._record(q, evaluate_gguf(f.path, self.merged.tokenizer, self.spec, base_dir=self.base_dir, label=q))
        if self.cfg.mode != "merged":
            self.evaluate_adapters()

    def _record(self, kind: str, result) -> None:
        self.evals[kind] = result
        (self.out / f"eval-{kind}.json").write_text(json.dumps(
            {"model": kind, "source": result.source, "means": result.means, "counts": result.counts,
             "loss": result.loss, "perplexity": result.perplexity, "too_short": result.too_short,
             "answers": result.table()}, indent=2) + "\n")
        means = ", ".join(f"{k} {v:.3f}" for k, v in result.metrics("").items())
        say(f"{kind}: task metrics on {len(result.items)} held-out answers ({result.source}): {means}")
        if result.too_short and len(self.evals) == 1:  # the references are the same for every model: said once
            say(f"warning: {result.too_short}")
        if warning := result.cut_short(self.spec.eval.max_new_tokens):
            say(f"{kind}: {warning}")

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m trainer.export", description=__doc__.splitlines()[0])
    return spec_arguments(p).parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from trainer.quiet import quiet_libraries

    quiet_libraries()
    args = parse_args(argv)
    try:
        spec = load_spec(args.spec, args.set)
    except SpecError as e:
        out.text(e.render(), err=True)
        return 2
    if spec.export is None:
        say("the spec has no `export` section: nothing to do")
        return 0
    try:
        return Export(spec, Path(args.base_dir or Path(args.spec).resolve().parent)).run()
    except UsageError as e:  # an export step, the model, the data: the user's to fix
        out.error(f"{e}")
        return e.exit_code
