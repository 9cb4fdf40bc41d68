"""A third-party scanner over every scenario: checkov's Kubernetes checks on what `helm template` renders
for each charts/kubetune/ci/*-values.yaml. Every finding that remains is listed, with the reason it stays,
in docs/chart.md ("What a scanner still reports"); a new finding fails here, and so does a listed one
that no longer occurs (the list stays true)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.chart.scenarios import NAMESPACE, ROOT, SCENARIOS, _template, scenario_file

DOCS = ROOT / "docs" / "chart.md"
CACHE = Path(os.environ.get("KUBETUNE_CACHE", ROOT / ".cache"))
if not CACHE.is_absolute():
    CACHE = ROOT / CACHE
CHECKOV = CACHE / "checkov" / "bin" / "checkov"
FINDING_ROW = re.compile(r"^\| `(CKV2?_K8S_\d+)` \| (.+?) \| (.+?) \|$", re.M)


def documented() -> dict[str, str]:
    """check id -> why it stays, from docs/chart.md's table."""
    text = DOCS.read_text(encoding="utf-8")
    start = text.index("## What a scanner still reports")
    section = text[start:text.index("\n## ", start + 1)]
    return {m.group(1): m.group(3) for m in FINDING_ROW.finditer(section)}


@pytest.fixture(scope="module")
def findings(tmp_path_factory: pytest.TempPathFactory) -> dict[str, set[str]]:
    """check id -> the scenarios (and objects) it fails in."""
    if not CHECKOV.is_file():
        pytest.fail(f"checkov is not installed at {CHECKOV}: run `make setup` (scripts/setup.sh installs it)")
    folder = tmp_path_factory.mktemp("rendered")
    for name in SCENARIOS:
        (folder / f"{name}.yaml").write_text(_template((scenario_file(name),), NAMESPACE), encoding="utf-8")
    done = subprocess.run([str(CHECKOV), "--directory", str(folder), "--framework", "kubernetes", "--output", "json",
                           "--compact", "--skip-download"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1), done.stderr[-2000:]  # 1: there are findings
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert reports and all(r["check_type"] == "kubernetes" for r in reports), done.stdout[:500]
    found: dict[str, set[str]] = {}
    scanned = set()
    for report in reports:
        for check in report["results"].get("failed_checks", []):
            where = f"{Path(check['file_path']).stem}: {check['resource']}"
            found.setdefault(check["check_id"], set()).add(where)
        for check in report["results"].get("passed_checks", []) + report["results"].get("failed_checks", []):
            scanned.add(Path(check["file_path"]).stem)
    assert scanned == set(SCENARIOS), f"checkov did not scan every scenario: {sorted(set(SCENARIOS) - scanned)}"
    return found


def test_every_finding_is_listed_with_its_reason(findings: dict[str, set[str]]) -> None:
    listed = documented()
    new = {check: sorted(where)[:3] for check, where in findings.items() if check not in listed}
    assert not new, f"checkov findings not listed in docs/chart.md (fix them, or list them with the reason): {new}"


def test_every_listed_finding_still_occurs(findings: dict[str, set[str]]) -> None:
    gone = sorted(set(documented()) - set(findings))
    assert not gone, f"docs/chart.md lists checkov findings that no longer occur: {gone}; remove their rows"


def test_the_checks_this_chart_answers_pass(findings: dict[str, set[str]]) -> None:
    # requests and limits on every container (CKV_K8S_10-13), no privilege (CKV_K8S_16, 20, 23),
    # read-only root (CKV_K8S_22), capabilities dropped (CKV_K8S_28, 37), seccomp (CKV_K8S_31),
    # no token mounted (CKV_K8S_38), a high UID (CKV_K8S_40)
    answered = {"CKV_K8S_10", "CKV_K8S_11", "CKV_K8S_12", "CKV_K8S_13", "CKV_K8S_16", "CKV_K8S_20", "CKV_K8S_22",
                "CKV_K8S_23", "CKV_K8S_28", "CKV_K8S_31", "CKV_K8S_37", "CKV_K8S_38", "CKV_K8S_40"}
    failing = {check: sorted(findings[check])[:3] for check in answered & set(findings)}
    assert not failing, failing
