"""What `launch status` and `launch list` show of a job's export, read from the files the export job writes in
the job's output folder (trainer/export/publish.py): `export/_SUCCESS` (written last, when every GGUF passed:
the merged GGUFs under `files`, and with `export.mode: adapters|both` each shared base GGUF and each adapter
GGUF with its gate figures and registered version, trainer/export/adapters.py `adapter_marker`) and, when the
gate failed and there is no `_SUCCESS`, `export/verify-adapters.json` (the adapter gate's report).

Only a local output folder is read (a local job's `output.uri`); JSON only: the launcher stays torch-free. A cluster
job's output folder is not read from here: its adapter exports come from the model versions registered from its
MLflow run (`from_registry`: their `kubetune.*` tags).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from launcher.output import columns
from launcher.resolve import is_remote


def _json(path: Path) -> dict[str, Any] | None:
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return found if isinstance(found, dict) else None


def _registered(found: Any) -> str | None:
    return f"{found['name']} v{found['version']}" if isinstance(found, dict) and found.get("name") else None


def _gate(passed: bool | None, top1: float | None, kl: float | None) -> str:
    word = "passed" if passed else "FAILED" if passed is not None else "not run"
    figures = [f"top-1 {top1:.1%}" if top1 is not None else None, f"KL {kl:.5f}" if kl is not None else None]
    shown = ", ".join(f for f in figures if f)
    return f"{word} ({shown})" if shown else word


def read(output_uri: str) -> dict[str, Any] | None:
    """The export of the job whose output folder is `output_uri`: {folder, passed, mode, merged, bases, adapters};
    None when there is none (yet) or the folder is not local."""
    if not output_uri or is_remote(output_uri):
        return None
    folder = Path(output_uri) / "export"
    marker = _json(folder / "_SUCCESS")
    if marker is None:
        return _failed(folder)
    adapters = {q: {"file": str(folder / a["file"]), "passed": a.get("passed"), "top1": a.get("top1"),
                    "kl": a.get("kl"), "registered": _registered(a.get("registered"))}
                for q, a in (marker.get("adapters") or {}).items() if isinstance(a, dict)}
    bases = {q: {"file": b["file"], "key": b.get("key"), "sha256": b.get("sha256"), "reused": b.get("reused"),
                 "registered": _registered(b.get("registered"))} for q, b in (marker.get("bases") or {}).items()}
    versions = {r.get("kind"): r.get("version") for r in marker.get("registered") or [] if isinstance(r, dict)}
    merged = {q: {"file": str(folder / "gguf" / q / name), "registered": _registered(
        {"name": marker.get("registered_name"), "version": versions[q]} if q in versions else None)}
        for q, name in (marker.get("files") or {}).items()}
    return {"folder": str(folder), "passed": bool(marker.get("passed")), "mode": marker.get("mode", "merged"),
            "merged": merged, "bases": bases, "adapters": adapters}


def _failed(folder: Path) -> dict[str, Any] | None:
    """An export whose adapter gate failed: no `_SUCCESS`, only the gate's report (its files named by quant)."""
    report = _json(folder / "verify-adapters.json")
    if report is None:
        return None
    adapters = {f["quant"]: {"file": f.get("file"), "passed": bool(f.get("passed")), "top1": f.get("top1"),
                             "kl": f.get("kl"), "registered": None} for f in report.get("files") or []}
    return {"folder": str(folder), "passed": False, "mode": None, "merged": {}, "bases": {}, "adapters": adapters}


def status_lines(found: dict[str, Any] | None) -> list[str]:
    """`launch status`: each merged GGUF, shared base and adapter GGUF of the export (none: no lines)."""
    if not found or not (found["merged"] or found["bases"] or found["adapters"]):
        return []
    mode = found["mode"] or "adapters (the gate failed: nothing registered)"
    rows = [["merged", q, m["file"], "", m["registered"]] for q, m in found["merged"].items()]
    rows += [["base", q, b["file"], "shared" + (", reused" if b["reused"] else ", written by this job"),
              b["registered"]] for q, b in found["bases"].items()]
    rows += [["adapter", q, a["file"], f"gate {_gate(a['passed'], a['top1'], a['kl'])}", a["registered"]]
             for q, a in found["adapters"].items()]
    return [f"export:     mode {mode}; files in {found['folder']}",
            *columns(["GGUF", "TYPE", "FILE", "NOTE", "REGISTERED"], rows, indent="  ")]


def list_lines(jobs: dict[str, dict[str, Any] | None]) -> list[str]:
    """`launch list`: the shared base GGUFs the listed jobs' adapter exports use, each once (by its content key),
    with the jobs over it; then each job's adapter GGUFs with their gate results. `jobs`: name -> `read`'s."""
    bases: dict[tuple[str, str], dict[str, Any]] = {}
    adapters = []
    for name, found in jobs.items():
        if not found:
            continue
        for q, b in found["bases"].items():
            bases.setdefault((q, b["key"] or b["file"]), b | {"jobs": []})["jobs"].append(name)
        adapters += [[name, q, a["file"], _gate(a["passed"], a["top1"], a["kl"]), a["registered"]]
                     for q, a in found["adapters"].items()]
    if not adapters:
        return []
    lines = ["", "shared base GGUFs:"]
    lines += columns(["TYPE", "BASE GGUF", "REGISTERED", "JOBS"],
                     [[q, b["file"], b["registered"], ", ".join(b["jobs"])] for (q, _), b in bases.items()],
                     indent="  ") if bases else ["  none (no export passed its gate)"]
    lines += ["", "adapter GGUFs:", *columns(["JOB", "TYPE", "ADAPTER GGUF", "GATE", "REGISTERED"], adapters,
                                             indent="  ")]
    return lines


def from_registry(versions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A cluster job's adapter exports in `read`'s shape (bases and adapters only), from the model versions registered
    from its run (their tags, trainer/export/adapters.py `register_adapters`); None when it registered no LoRA GGUF."""
    bases, adapters = {}, {}
    for v in versions:
        tags = v.get("tags") or {}
        kind = str(tags.get("kubetune.kind", ""))
        if not kind.startswith("lora-"):
            continue
        q, passed = kind.removeprefix("lora-"), tags.get("kubetune.verify.passed")
        top1, kl = tags.get("kubetune.verify.top1"), tags.get("kubetune.verify.kl")
        adapters[q] = {"file": tags.get("kubetune.file"), "passed": None if passed is None else passed == "true",
                       "top1": float(top1) if top1 else None, "kl": float(kl) if kl else None,
                       "registered": _registered(v)}
        bases[q] = {"file": tags.get("kubetune.base.file"), "key": tags.get("kubetune.base.key"), "reused": None,
                    "sha256": tags.get("kubetune.base.sha256"), "registered": _registered(
                        {"name": tags.get("kubetune.base.name"), "version": tags.get("kubetune.base.version")})}
    return {"bases": bases, "adapters": adapters} if adapters else None


def registry_lines(versions: list[dict[str, Any]]) -> list[str]:
    """A cluster job's `launch status` (its output folder is not read from here): each LoRA GGUF version the
    export registered from the run, with its gate result and the shared base version it needs (the version's tags,
    trainer/export/adapters.py `register_adapters`)."""
    lines = []
    for v in sorted(versions, key=lambda v: int(v["version"])):
        tags = v.get("tags") or {}
        if not str(tags.get("kubetune.kind", "")).startswith("lora-"):
            continue
        passed = tags.get("kubetune.verify.passed")
        top1, kl = tags.get("kubetune.verify.top1"), tags.get("kubetune.verify.kl")
        gate = _gate(None if passed is None else passed == "true", float(top1) if top1 else None,
                     float(kl) if kl else None)
        lines.append(f"  adapter GGUF {tags['kubetune.kind']}: models:/{v['name']}/{v['version']}, gate {gate}; "
                     f"base models:/{tags.get('kubetune.base.name')}/{tags.get('kubetune.base.version')} "
                     f"({tags.get('kubetune.base.file')})")
    return lines
