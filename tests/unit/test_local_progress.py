"""Progress bars in the local runner's logs: tqdm's `\\r`-rewritten states become a few plain prefixed lines
without a terminal and one updating line on one; and the pods' tqdm slowed down without a terminal."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from tqdm import tqdm

from launcher.backends.local import PodProcess
from launcher.backends.local_run import CLEAR, LocalRun, PodLines, Screen

DESC = "Converting and de-quantizing GGUF tensors..."


def tqdm_bytes(total: int = 300) -> bytes:
    """What a real tqdm bar writes when every step redraws it, between two log lines."""
    out = io.StringIO()
    out.write("loading the GGUF base model\n")
    for _ in tqdm(range(total), desc=DESC, file=out, mininterval=0, miniters=1, ascii=False):
        pass
    out.write("[kubetune] loaded in 3.2s\n")
    return out.getvalue().encode()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def feed(lines: PodLines, data: bytes, size: int) -> None:
    """In chunks of `size` bytes, as a pipe may cut it: in a `\\r\\n`, in a UTF-8 character (the bar's blocks)."""
    for i in range(0, len(data), size):
        lines.feed(data[i:i + size])
    lines.close()


@pytest.mark.parametrize("size", [1, 7, 4096, 1 << 20])
def test_without_a_terminal_a_bar_is_a_few_plain_lines(size: int) -> None:
    data = tqdm_bytes()
    assert data.count(b"\r") > 300  # the stream is what the issue saw: hundreds of states
    out = io.StringIO()
    feed(PodLines("rank 0", Screen(out)), data, size)
    lines = out.getvalue().split("\n")
    assert lines.pop() == ""
    assert all("\r" not in line and line.startswith("[rank 0] ") for line in lines)
    assert lines[0] == "[rank 0] loading the GGUF base model" and lines[-1] == "[rank 0] [kubetune] loaded in 3.2s"
    bar = lines[1:-1]
    assert 2 <= len(bar) <= 6, bar  # its start, each quarter, its end
    assert bar[0].startswith(f"[rank 0] {DESC}:   0%") and f"{DESC}: 100%" in bar[-1] and "300/300" in bar[-1]
    percents = [int(line.split(": ", 1)[1].split("%")[0]) for line in bar]
    assert percents == sorted(percents) and {25, 50, 75} <= {p // 25 * 25 for p in percents}


def test_on_a_terminal_a_bar_updates_one_line_then_stays() -> None:
    out = Terminal()
    feed(PodLines("export", Screen(out)), tqdm_bytes(), 64)
    text = out.getvalue()
    assert text.count(CLEAR) > 100  # it was redrawn, in place
    shown = [line.rsplit(CLEAR, 1)[-1] for line in text.split("\n")]  # what the terminal shows at the end
    assert shown.pop() == ""
    assert len(shown) == 3 and shown[0] == "[export] loading the GGUF base model"
    assert shown[1].startswith(f"[export] {DESC}: 100%") and "300/300" in shown[1]
    assert shown[2] == "[export] [kubetune] loaded in 3.2s"


def test_a_bar_without_a_total_is_shown_every_few_seconds() -> None:
    now = [0.0]
    out = io.StringIO()
    lines = PodLines("rank 1", Screen(out), clock=lambda: now[0])
    for i in range(1, 41):  # one state every 5 s, for 200 s: no percent to go by
        lines.feed(f"\rtokenizing: {i}it [00:{i * 5:02d}, 0.20it/s]".encode())
        now[0] += 5.0
    lines.feed(b"\n")
    lines.close()
    shown = out.getvalue().splitlines()
    assert shown[0] == "[rank 1] tokenizing: 1it [00:05, 0.20it/s]" and shown[-1].startswith("[rank 1] tokenizing: 40it")
    assert 6 <= len(shown) <= 9 and "\r" not in out.getvalue()  # the first, one every 30 s, the last


def test_plain_lines_and_line_ends_pass_as_before() -> None:
    out = io.StringIO()
    seen: list[str] = []
    feed(PodLines("rank 0 preflight", Screen(out), seen.append), b"one\r\ntwo\n\nthree\xc3\xa9", 2)
    assert out.getvalue() == "[rank 0 preflight] one\n[rank 0 preflight] two\n[rank 0 preflight] \n" \
                             "[rank 0 preflight] three\u00e9\n"
    assert seen == ["one", "two", "three\u00e9"]


def test_local_run_streams_a_real_bar_as_lines(tmp_path: Path) -> None:
    code = textwrap.dedent(f"""
        import sys
        from tqdm import tqdm
        for _ in tqdm(range(200), desc={DESC!r}, mininterval=0, miniters=1):
            pass
        print("[kubetune] error: a diagnosis", flush=True)
    """)
    pod = PodProcess(0, [sys.executable, "-c", code], {}, tmp_path)
    out = io.StringIO()
    run = LocalRun([pod], out=out, grace=5)
    outcome = run.run()
    assert outcome.ok, out.getvalue()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and all(line.startswith("[rank 0] ") for line in lines)
    assert 3 <= len(lines) <= 7 and "100%" in lines[-2] and "200/200" in lines[-2]
    assert outcome.errors == {0: "a diagnosis"}


def redraws(quiet: bool) -> int:
    """How many times a 1.5-second tqdm bar redraws in a process whose stderr is a pipe."""
    code = textwrap.dedent(f"""
        import time
        if {quiet}:
            from trainer.quiet import plain_progress
            plain_progress()
        from tqdm import tqdm
        for _ in tqdm(range(150)):
            time.sleep(0.01)
    """)
    env = {k: v for k, v in os.environ.items() if k != "TQDM_MININTERVAL"}
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, timeout=60, check=True)
    return done.stderr.count(b"\r")


def test_pods_redraw_tqdm_rarely_without_a_terminal() -> None:
    assert redraws(quiet=False) > 8  # tqdm's own default: every 0.1 s
    assert redraws(quiet=True) <= 3  # the first state, the last
