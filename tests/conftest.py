"""Makes `tests.resources` importable however pytest is started (`pytest`, `python -m pytest`),
and holds the fixtures several test folders share."""

import sys
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
