"""The pods' one output layer: every line a pod writes for its user goes through `logging` here, with one
formatter that keeps the lines users and the launcher read. Progress goes to stdout, errors to stderr:

    say("loaded the base model")            [kubetune] loaded the base model
    say("10 loss 1.2345", tag="train")      [train] 10 loss 1.2345
    error("data.train: no such file")       [kubetune] error: data.train: no such file

`ERROR_PREFIX` is the contract with the launcher: it finds a failed pod's diagnosis by it in the pod's log
(launcher/backends/local.py ERROR_MARK). `main_only=True` writes from the job's first rank only (trainer/ranks.py `is_main`),
so an 8-GPU pod does not say everything eight times. Torch-free: the launcher may import it.
"""

from __future__ import annotations

import logging
import sys

from trainer.ranks import is_main

ERROR_PREFIX = "[kubetune] error:"
OUT, ERR = "kubetune.out", "kubetune.err"


class _Current(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stdout / sys.stderr is now (a test's capture, a redirect), flushing each line."""

    def __init__(self, err: bool):
        super().__init__()
        self.err = err

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr if self.err else sys.stdout
        super().emit(record)


class _Line(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        tag = getattr(record, "tag", "kubetune")
        return f"[{tag}] {record.getMessage()}" if tag else record.getMessage()


def _logger(name: str) -> logging.Logger:
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = _Current(err=name == ERR)
        handler.setFormatter(_Line())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # libraries' logging configuration never reformats or drops these lines
    return logger


def _emit(name: str, level: int, message: str, tag: str) -> None:
    """Straight to our handler: `logging.disable` or a root level set by a library cannot drop the line."""
    logger = _logger(name)
    logger.handle(logger.makeRecord(name, level, __file__, 0, message, None, None, extra={"tag": tag}))


def say(message: str, *, tag: str = "kubetune", main_only: bool = False) -> None:
    """A progress line on stdout: `[tag] message`."""
    if not main_only or is_main():
        _emit(OUT, logging.INFO, message, tag)


def warn(message: str) -> None:
    """A line on stderr that is not the diagnosis: `[kubetune] message`."""
    _emit(ERR, logging.WARNING, message, "kubetune")


def error(message: str) -> None:
    """The diagnosis line on stderr: `[kubetune] error: message`, what the launcher shows of a failed pod."""
    _emit(ERR, logging.ERROR, f"{ERROR_PREFIX} {message}", "")


def text(message: str, *, err: bool = False) -> None:
    """Lines as they are (a report, a usage line), on stdout or stderr."""
    _emit(ERR if err else OUT, logging.INFO, message, "")
