r"""One pod's output as lines: split on both line ends and carriage returns, so a progress bar (tqdm's states,
each rewritten after a `\r`) is one updating line on a terminal and, elsewhere (a pipe, CI, a log file), a few
plain lines: its start, each PROGRESS_PERCENT done, at least every PROGRESS_SECONDS, and its end. The local runner
(launcher/backends/local_run.py) shows each pod's lines on one Screen, prefixed with the rank, and also writes them,
unprefixed, to the pod's own log file (launcher/local_jobs.py)."""

from __future__ import annotations

import codecs
import re
import shutil
import threading
import time
from collections.abc import Callable
from typing import IO

PROGRESS_PERCENT = 25  # without a terminal, a progress bar is shown at its start, each quarter done,
PROGRESS_SECONDS = 30.0  # at least this often, and at its end
PERCENT = re.compile(r"(?<![\d.])(\d{1,3})(?:\.\d+)?%")
LINE_END = re.compile(r"\r\n|\n|\r")
CLEAR = "\r\033[K"  # back to the line's start, erase it


class Screen:
    """Where every pod's lines go, one whole line at a time; on a terminal, also one updating line."""

    def __init__(self, out: IO[str]):
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.open = False  # an updating line is shown, not ended
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        with self._lock:
            self.out.write((CLEAR if self.open else "") + text + "\n")
            self.open = False
            self.out.flush()

    def update(self, text: str) -> None:
        with self._lock:
            self.out.write(CLEAR + text[: shutil.get_terminal_size().columns - 1])
            self.open = True
            self.out.flush()

    def end(self) -> None:
        """Ends an updating line left shown, as it is."""
        with self._lock:
            if self.open:
                self.out.write("\n")
                self.out.flush()
            self.open = False


class PodLines:
    r"""One pod's output bytes as lines on the Screen, prefixed `[prefix] ` (nothing for an empty prefix), split on
    `\n`, `\r\n` and `\r`. Text ended by a `\r` is a progress state (the next one rewrites it): on a terminal it
    updates one line; elsewhere only the bar's first state, one per PROGRESS_PERCENT or PROGRESS_SECONDS, and its
    last state are kept."""

    def __init__(self, prefix: str, screen: Screen, seen: Callable[[str], None] = lambda _: None,
                 clock: Callable[[], float] = time.monotonic):
        self.prefix, self.screen, self.seen, self.clock = f"[{prefix}] " if prefix else "", screen, seen, clock
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.rest = ""  # text not ended yet
        self.cr = False  # the last text ended was ended by a `\r`: what follows is a progress state
        self.state: str | None = None  # the progress bar's latest state; None: no bar under way
        self.shown: tuple[str, float, int] | None = None  # the bar's last state shown as a line: when, which step

    def feed(self, data: bytes, final: bool = False) -> None:
        text, start = self.rest + self.decoder.decode(data, final), 0
        for m in LINE_END.finditer(text):
            if m.group() == "\r" and m.end() == len(text) and not final:
                break  # perhaps the start of a `\r\n`
            self.cr = m.group() == "\r"
            self._fragment(text[start:m.start()], ended=not self.cr)
            start = m.end()
        self.rest = text[start:]
        shown = self.rest.rstrip("\r")
        if self.screen.tty and self.cr and shown:  # the state being written, before its `\r` comes
            self.screen.update(f"{self.prefix}{shown}")

    def close(self) -> None:
        self.feed(b"", final=True)
        if self.rest or self.state is not None:
            self._fragment(self.rest, ended=True)
        self.rest = ""

    def _fragment(self, text: str, ended: bool) -> None:
        if text:
            self.seen(text)
        if not ended:
            if text:
                self._progress(text)
            return
        if self.state is None:
            self.screen.line(f"{self.prefix}{text}")
            return
        last, shown, self.state, self.shown = text or self.state, self.shown, None, None
        if self.screen.tty or shown is None or shown[0] != last:
            self.screen.line(f"{self.prefix}{last}")

    def _progress(self, text: str) -> None:
        first, self.state = self.state is None, text
        if self.screen.tty:
            self.screen.update(f"{self.prefix}{text}")
            return
        now, found = self.clock(), PERCENT.search(text)
        step = min(int(found.group(1)), 99) // PROGRESS_PERCENT if found else -1  # 100%: the last state says it
        if first or self.shown is None or step > self.shown[2] or now - self.shown[1] >= PROGRESS_SECONDS:
            self.screen.line(f"{self.prefix}{text}")
            self.shown = (text, now, step)
