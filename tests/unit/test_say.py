"""trainer/say.py, the pods' output layer: the line formats the launcher and users read, stdout vs stderr,
rank 0 only when asked, and library logging configuration cannot swallow or reformat them."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from launcher.backends.local import ERROR_MARK
from trainer import say


def test_lines_keep_their_prefixes_and_streams(capsys: pytest.CaptureFixture[str]) -> None:
    say.say("loaded the base model")
    say.say("10 loss 1.2345", tag="train")
    say.text("a report\n  with lines")
    say.error("data.train: no such file")
    say.text("usage: ...", err=True)
    out, err = capsys.readouterr()
    assert out == "[kubetune] loaded the base model\n[train] 10 loss 1.2345\na report\n  with lines\n"
    assert err == "[kubetune] error: data.train: no such file\nusage: ...\n"
    assert ERROR_MARK.search(err)  # the contract: the launcher finds the diagnosis by this mark


def test_main_only_writes_from_rank_0(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "3")
    say.say("from every rank")
    say.say("from rank 0 only", main_only=True)
    assert not say.is_main()
    monkeypatch.setenv("RANK", "0")
    say.say("now rank 0", main_only=True)
    assert capsys.readouterr().out == "[kubetune] from every rank\n[kubetune] now rank 0\n"


def test_a_library_silencing_logging_does_not_silence_us(capsys: pytest.CaptureFixture[str]) -> None:
    logging.getLogger().setLevel(logging.CRITICAL)
    logging.disable(logging.CRITICAL)  # what a library might do
    try:
        say.say("progress still shown")
        say.error("errors too")
    finally:
        logging.disable(logging.NOTSET)
        logging.getLogger().setLevel(logging.WARNING)
    out, err = capsys.readouterr()
    assert (out, err) == ("[kubetune] progress still shown\n", "[kubetune] error: errors too\n")


def test_lines_are_flushed_at_once_in_a_pod() -> None:
    """A pod's stdout is a pipe: each line must reach it before the process does anything else."""
    code = "from trainer import say; import os; say.say('one'); os._exit(0)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout == "[kubetune] one\n"
