"""Every seed workflow's tiny stand-in, end to end: `launch submit --local examples/seedNNN-*.yaml` with the
stand-in overrides of tests/seeds.py trains, exports, verifies and registers, as its user would see it.

Seed 003 starts one step earlier, as its user does: its textbook pages are chunked (`launch data chunk`),
a helper model behind an OpenAI-compatible endpoint (llama.cpp's server, serving a GGUF kubetune itself
exported) writes instruction rows from them (`launch data generate`), `launch data validate` accepts the
result, and the stand-in trains on it next to the user's own rows.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from launcher.cli import main
from tests.e2e.submit import submit_local
from tests.models import tiny_model
from tests.seeds import SEEDS, Seed
from trainer.spec.io import load_specs
from trainer.spec.job import JobSpec

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def launch(*args: str) -> tuple[int, str]:
    done = CliRunner().invoke(main, list(args))
    return done.exit_code, done.stdout + done.stderr


def run_standin(seed: Seed, dest: Path, extra: Sequence[str] = ()) -> tuple[list[JobSpec], str]:
    """The stand-in through `launch submit --local`; returns its jobs' specs and the launcher's output."""
    spec_path = seed.copy_to(dest)
    overrides = [*seed.overrides(tiny_model(seed.arch)), *extra]
    args = [x for o in overrides for x in ("--set", o)]
    done = submit_local(spec_path, timeout=1800, args=args)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-8000:]
    return load_specs(spec_path, overrides), done.stdout


def check_registered(spec: JobSpec, dest: Path) -> dict:
    """The job trained, its GGUFs passed the gate, and the registry holds them under the spec's name: merged GGUFs,
    or with `export.mode: adapters` LoRA GGUFs tagged with the shared base version they need."""
    from mlflow import MlflowClient

    out = dest / "runs" / spec.name
    marker = json.loads((out / "_SUCCESS").read_text())
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "export" / "_SUCCESS").is_file(), f"{spec.name}: the export did not finish"
    adapters = spec.export.mode == "adapters"
    report = json.loads((out / "export" / ("verify-adapters.json" if adapters else "verify.json")).read_text())
    assert export_types(report) == sorted(spec.export.gguf) and all(f["passed"] for f in report["files"]), report
    client = MlflowClient(tracking_uri=marker["tracking_uri"])
    name = spec.export.register.name or spec.name
    versions = client.search_model_versions(f"name = '{name}'")
    kinds = [f"lora-{q}" for q in spec.export.gguf] if adapters else list(spec.export.gguf)
    assert sorted(v.tags["kubetune.kind"] for v in versions) == sorted(["adapter", *kinds])
    alias = client.get_model_version_by_alias(name, spec.export.register.alias)
    assert alias.tags["kubetune.kind"] == kinds[0] and alias.tags["kubetune.verify.passed"] == "true"
    for metric in spec.eval.metrics:  # task metrics of the GGUF (and of the merged model, on the adapter)
        assert 0.0 <= float(alias.tags[f"kubetune.eval.{metric}"]) <= 1.0, alias.tags
    if spec.eval.metrics and not adapters:
        adapter = next(v for v in versions if v.tags["kubetune.kind"] == "adapter")
        assert all(f"kubetune.eval.{m}" in adapter.tags for m in spec.eval.metrics), adapter.tags
    if adapters:  # each LoRA GGUF names a registered base version of its type
        for v in versions:
            if v.tags["kubetune.kind"].startswith("lora-"):
                base = client.get_model_version(v.tags["kubetune.base.name"], v.tags["kubetune.base.version"])
                assert base.tags["kubetune.sha256"] == v.tags["kubetune.base.sha256"]
    if spec.export.lmstudio_publisher:  # LM Studio's <publisher>/<model>/<file>.gguf
        folders = list((out / "export" / "lmstudio" / spec.export.lmstudio_publisher).iterdir())
        files = sorted(p.name for f in folders for p in f.glob("*.gguf"))
        lora = f"{spec.name}-lora.gguf"
        assert len(folders) == 1 and (lora in files and len(files) == 1 + len(kinds) if adapters else
                                      files == sorted(f"{spec.name}-{q}.gguf" for q in kinds)), files
    history = client.get_metric_history(marker["run_id"], "loss")
    assert len(history) == marker["steps"], "one loss per step, from rank 0"
    return {"marker": marker, "alias": alias, "client": client, "out": out}


def export_types(report: dict) -> list[str]:
    return sorted(f["quant"] for f in report["files"])


@pytest.mark.parametrize("seed_id", sorted(s for s in SEEDS if s != "seed003"))
def test_standin_trains_exports_and_registers(seed_id: str, tmp_path: Path) -> None:
    seed = SEEDS[seed_id]
    specs, _ = run_standin(seed, tmp_path)
    for spec in specs:
        check_registered(spec, tmp_path)
    if any(spec.export.mode == "adapters" for spec in specs):  # the matrix's cells over one shared base
        code, listed = launch("list")
        assert code == 0, listed
        shared = listed[listed.index("shared base GGUFs:"):listed.index("adapter GGUFs:")]
        for q in specs[0].export.gguf:
            (row,) = [line for line in shared.splitlines() if line.split()[:1] == [q] and specs[0].name in line]
            assert all(spec.name in row for spec in specs), shared  # one base, every cell over it


def test_seed003_from_textbook_pages_to_a_registered_tutor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.integration.servers import llama_server
    from trainer.export import gguf

    seed = SEEDS["seed003"]
    seed.copy_to(tmp_path)
    monkeypatch.chdir(tmp_path)
    docs = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "data" / "seed003" / "docs").glob("*.md"))
    code, out = launch("data", "chunk", *docs, "--db", "chunks.sqlite", "--size", "400", "--overlap", "40")
    assert code == 0, out
    chunks = int(re.search(r"chunked \((\d+) chunks\)", out).group(1))
    assert chunks >= 6, out

    helper = gguf.convert(tiny_model("qwen2"), tmp_path / "helper-f16.gguf", "f16", tmp_path / "convert.log").path
    with llama_server(helper, "helper", tmp_path / "server.log") as url:
        code, out = launch("data", "generate", "--db", "chunks.sqlite", "--endpoint", url, "--model", "helper",
                           "--out", "data/seed003/generated.jsonl", "--per-chunk", "2", "--response-format",
                           "json_object", "--max-chars", "24", "--max-tokens", "400", "--max-retries", "2",
                           "--seed", "3", "--temperature", "1.0")
    assert code == 0, out
    generated = [json.loads(line) for line in (tmp_path / "data/seed003/generated.jsonl").read_text().splitlines()]
    assert generated and all(r["source"].startswith("data/seed003/docs/") for r in generated), generated[:3]

    train = "data.train=[data/seed003/sft_data.jsonl,data/seed003/generated.jsonl]"
    spec_path = tmp_path / seed.example
    overrides = [*seed.overrides(tiny_model(seed.arch)), train]
    code, out = launch("data", "validate", str(spec_path), *[x for o in overrides for x in ("--set", o)])
    assert code == 0, out
    rows = int(re.search(r"data\.train: 2 file\(s\), (\d+) rows read", out).group(1))
    assert rows == 56 + len(generated), out

    specs, stdout = run_standin(seed, tmp_path, [train])
    (spec,) = specs
    got = check_registered(spec, tmp_path)
    modelfile = next((got["out"] / "export" / "gguf").glob("q4_k_m/Modelfile")).read_text()
    assert "SYSTEM" in modelfile and "5th-grade math tutor" in modelfile  # data.system_prompt goes along
    assert got["alias"].tags["kubetune.imatrix"].startswith("computed on 4 conversations")
    for metric in ("exact_match", "rouge_l"):  # task metrics on the GGUF, as registry tags
        assert 0.0 <= float(got["alias"].tags[f"kubetune.eval.{metric}"]) <= 1.0
