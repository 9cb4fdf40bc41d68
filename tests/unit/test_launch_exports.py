"""What `launch status` / `launch list` show of an export (launcher/exports.py) in the cases the end-to-end test
(tests/integration/test_adapter_export_s3.py, a passing `both` and `adapters` export) does not reach: an adapter gate
that failed (no `_SUCCESS`, only the report the export writes with trainer/export/verify.py), a merged-only export
(no adapter section in the list), an export still to come, and a remote output folder (not read)."""

from __future__ import annotations

import json
from pathlib import Path

from launcher import exports
from trainer.export import verify


def failed_gate(output: Path) -> None:
    """What the export publishes when the adapter gate fails: the report, no `_SUCCESS` (trainer/export/adapters.py)."""
    bad = verify.FileReport("q8_0", "base-q8_0.gguf + job-lora.gguf", top1=0.42, kl=1.5, positions=30, min_top1=0.95,
                            max_kl=0.02, checks=[verify.Check("top1", False, "top-1 agreement 42.00% (need >= 95%)")])
    report = verify.Report([bad], 3)
    (output / "export").mkdir(parents=True)
    (output / "export" / "verify-adapters.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")


def test_a_failed_adapter_gate_is_shown_from_its_report(tmp_path):
    failed_gate(tmp_path / "job")
    found = exports.read(str(tmp_path / "job"))
    assert found is not None and found["passed"] is False and found["bases"] == {}
    assert found["adapters"]["q8_0"] | {"file": None} == {"file": None, "passed": False, "top1": 0.42, "kl": 1.5,
                                                          "registered": None}
    lines = exports.status_lines(found)
    assert lines[0].startswith("export:     mode adapters (the gate failed: nothing registered)")
    assert "gate FAILED (top-1 42.0%, KL 1.50000)" in lines[-1]
    listed = exports.list_lines({"job": found})
    assert "  none (no export passed its gate)" in listed and "job" in listed[-1] and "FAILED" in listed[-1]


def test_a_merged_export_lists_its_ggufs_and_no_adapter_section(tmp_path):
    folder = tmp_path / "job" / "export"
    folder.mkdir(parents=True)
    marker = {"passed": True, "run_id": "r", "llama_cpp": "x", "files": {"q4_k_m": "job-q4_k_m.gguf"},
              "registered": [{"kind": "q4_k_m", "version": "2", "source": "runs:/r/export/q4_k_m"}]}
    (folder / "_SUCCESS").write_text(json.dumps(marker))
    found = exports.read(str(tmp_path / "job"))
    assert found is not None and found["mode"] == "merged" and found["adapters"] == {}
    assert str(folder / "gguf" / "q4_k_m" / "job-q4_k_m.gguf") in exports.status_lines(found)[-1]
    assert exports.list_lines({"job": found}) == []


def test_no_export_yet_and_remote_folders_show_nothing(tmp_path):
    assert exports.read(str(tmp_path / "job")) is None
    assert exports.read("s3://runs/job") is None and exports.read("") is None
    assert exports.status_lines(None) == [] and exports.list_lines({"job": None}) == []
