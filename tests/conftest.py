"""Makes `tests.resources` importable however pytest is started (`pytest`, `python -m pytest`),
and holds the fixtures several test folders share."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests import file_order  # noqa: E402  (importable once ROOT is on the path)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--record-durations",
        metavar="PATH",
        default=None,
        help="write the seconds each test file took into PATH (tests/durations.json orders `make test`)",
    )


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("record_durations")
    if path and not hasattr(config, "workerinput"):  # the controller (or the only process) sees every report
        config.pluginmanager.register(file_order.DurationRecorder(Path(path), Path(ROOT)), "kubetune-durations")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Heaviest test files first (tests/file_order.py); every worker sorts alike, as xdist requires."""
    order = file_order.heaviest_first([item.nodeid for item in items], file_order.load_seconds())
    items[:] = [items[i] for i in order]


@pytest.fixture(scope="session")
def helm_binary() -> str:
    """The real helm binary (installed into the venv by `make setup`); fails, never skips, without it."""
    from launcher import helm
    from launcher.errors import UserError

    try:
        return helm.find_helm()
    except UserError as e:
        pytest.fail(f"these tests need the real helm binary: {e.message}")


@pytest.fixture(scope="session", autouse=True)
def local_jobs_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Local jobs' records (launcher/local_jobs.py) go to a folder of this session's, not the user's ~/.kubetune;
    the processes tests start inherit it."""
    import os

    home = tmp_path_factory.mktemp("kubetune-home")
    before = os.environ.get("KUBETUNE_HOME")
    os.environ["KUBETUNE_HOME"] = str(home)
    yield home
    if before is None:
        os.environ.pop("KUBETUNE_HOME", None)
    else:
        os.environ["KUBETUNE_HOME"] = before
