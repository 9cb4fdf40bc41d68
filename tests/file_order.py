"""Runs the heaviest test files first, so that `make test`'s workers finish together.

`make test` hands whole files to its workers (`--dist loadfile`, in collection order with
`--no-loadscope-reorder`). Files taken in the order they happen to be collected leave one worker
running a long file at the end while the other waits. Taking the longest first (the longest-processing-time
rule) leaves only short files for the end.

The weight of a file is its measured seconds (every phase of every test in it) in `tests/durations.json`,
which `pytest --record-durations tests/durations.json` rewrites. A file not measured yet goes first:
it may be long, and a short one costs nothing there.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from datetime import date
from pathlib import Path

import pytest

DURATIONS = Path(__file__).with_name("durations.json")


def file_of(nodeid: str) -> str:
    return nodeid.split("::", 1)[0]


def load_seconds(path: Path = DURATIONS) -> dict[str, float]:
    """Seconds per test file; {} when the file is missing."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {str(name): float(seconds) for name, seconds in data["seconds"].items()}


def heaviest_first(nodeids: list[str], seconds: dict[str, float]) -> list[int]:
    """The order (indexes into `nodeids`) that runs whole files by weight, heaviest first; tests keep their
    order within a file, and files of equal weight keep their collection order."""
    first_seen: dict[str, int] = {}
    for i, nodeid in enumerate(nodeids):
        first_seen.setdefault(file_of(nodeid), i)

    def key(i: int) -> tuple[float, int, int]:
        name = file_of(nodeids[i])
        return (-seconds.get(name, math.inf), first_seen[name], i)

    return sorted(range(len(nodeids)), key=key)


class DurationRecorder:
    """A pytest plugin that sums each file's test phases as the reports arrive (on the controller under
    xdist) and merges them into `path` at the end of the session."""

    def __init__(self, path: Path, root: Path) -> None:
        self.path = path
        self.root = root
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[file_of(report.nodeid)] += report.duration

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.seconds:
            self.write(" ".join(["pytest", *session.config.invocation_params.args]))

    def write(self, command: str) -> None:
        """Files measured now are replaced, files no longer in the tree dropped, the others kept."""
        before = load_seconds(self.path)
        merged = {name: s for name, s in before.items() if (self.root / name).exists()}
        merged.update({name: round(s, 1) for name, s in self.seconds.items()})
        data = {
            "what": "seconds per test file, every phase of every test; tests/file_order.py runs the heaviest first",
            "measured": f"{date.today().isoformat()}: {command}",
            "seconds": dict(sorted(merged.items(), key=lambda kv: -kv[1])),
        }
        self.path.write_text(json.dumps(data, indent=1) + "\n")
