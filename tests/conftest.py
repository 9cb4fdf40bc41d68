"""Makes `tests.resources` importable however pytest is started (`pytest`, `python -m pytest`),
and holds the fixtures several test folders share."""

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


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
