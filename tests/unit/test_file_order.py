"""The order `make test` hands files to its workers: heaviest first, unmeasured files before all."""

import json
from pathlib import Path

import pytest

from tests import file_order


def test_files_run_heaviest_first_and_keep_their_tests_in_order() -> None:
    nodeids = ["a.py::one", "b.py::one", "a.py::two", "c.py::one", "b.py::two", "d.py::one"]
    seconds = {"a.py": 5.0, "b.py": 90.0, "c.py": 5.0}
    order = [nodeids[i] for i in file_order.heaviest_first(nodeids, seconds)]
    # d.py is not measured: it may be long, so it goes first; a.py and c.py weigh alike and keep their order
    assert order == ["d.py::one", "b.py::one", "b.py::two", "a.py::one", "a.py::two", "c.py::one"]


def test_the_recorded_durations_order_this_suite() -> None:
    seconds = file_order.load_seconds()
    assert seconds, "tests/durations.json is missing: run `pytest --record-durations tests/durations.json`"
    root = Path(file_order.__file__).resolve().parents[1]
    assert all((root / name).is_file() for name in seconds), "durations name a file that is gone"
    assert all(s >= 0 for s in seconds.values())


def test_a_recorded_run_replaces_its_files_and_keeps_the_others(tmp_path: Path) -> None:
    (tmp_path / "kept.py").write_text("")
    (tmp_path / "measured.py").write_text("")
    path = tmp_path / "durations.json"
    path.write_text(json.dumps({"seconds": {"kept.py": 3.0, "measured.py": 1.0, "gone.py": 7.0}}))
    recorder = file_order.DurationRecorder(path, tmp_path)
    for phase_seconds in (0.5, 20.0, 0.25):
        recorder.pytest_runtest_logreport(pytest.TestReport("measured.py::t", ("measured.py", 1, "t"), {}, "passed",
                                                            None, "call", duration=phase_seconds))
    recorder.write("pytest measured.py")
    data = json.loads(path.read_text())
    assert data["seconds"] == {"measured.py": 20.8, "kept.py": 3.0}
    assert list(data["seconds"]) == ["measured.py", "kept.py"]
    assert data["measured"].endswith(": pytest measured.py")
