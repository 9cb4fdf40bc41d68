"""trainer/data/prefetch.py: batches made ahead in a thread are the loop's own batches, in order, with the same
stream positions (so a resume from the position of the k-th consumed batch continues with batch k+1, whatever was
made ahead); the queue is bounded; a worker's error reaches the loop as raised; close() leaves no thread behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.resources import tokenizer_for
from trainer.data import Collator, DataError
from trainer.data.prefetch import Prefetch, PrefetchLoader
from trainer.data.stream import TrainStream
from trainer.spec.job import JobSpec
from trainer.train.datastate import TAG, Tagged, TaggedCollator

BATCH = 3


@pytest.fixture(scope="module")
def tok() -> Any:
    return tokenizer_for("qwen2")


def write_rows(path: Path, n: int, bad_at: tuple[int, ...] = ()) -> str:
    lines = []
    for i in range(n):
        if i in bad_at:
            lines.append("{not json")
        words = " ".join(["word"] * (i * 7 % 30))
        lines.append(json.dumps({"messages": [{"role": "user", "content": f"question {i} {words}"},
                                              {"role": "assistant", "content": f"answer {i}"}]}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def spec_for(train: str, **data: Any) -> JobSpec:
    return JobSpec.model_validate({"name": "t", "base_model": "m", "training": {"max_steps": 10},
                                   "data": {"train": train, "max_seq_len": 96, **data}})


def loader(spec: JobSpec, tok: Any, depth: int, rank: int = 0, world: int = 1,
           state: dict[str, Any] | None = None) -> tuple[TrainStream, PrefetchLoader]:
    """As ResumableTrainer.get_train_dataloader builds it, over a stream of 2 passes."""
    stream = TrainStream(spec, tok, rank=rank, world_size=world, passes=2, window_rows=4)
    if state is not None:
        stream.load_state_dict({"ranks": [state]})
    collate = TaggedCollator(Collator.for_spec(spec, tok))
    return stream, PrefetchLoader(Tagged(stream, BATCH), batch_size=BATCH, collate_fn=collate, num_workers=0,
                                  generator=torch.Generator(), depth=depth)


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a)


def workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "kubetune-prefetch"]


@pytest.mark.parametrize(("rank", "world"), [(0, 1), (1, 2)])
def test_the_batches_and_their_positions_are_those_of_the_loop_without_prefetch(tmp_path: Path, tok: Any, rank: int,
                                                                              world: int) -> None:
    spec = spec_for(write_rows(tmp_path / "train.jsonl", 90))
    _, plain = loader(spec, tok, 0, rank, world)
    _, ahead = loader(spec, tok, 2, rank, world)
    expected = list(plain)
    got = list(ahead)
    assert len(expected) > 10 and len(got) == len(expected)
    for k, (a, b) in enumerate(zip(expected, got, strict=True)):
        assert same(a, b), f"batch {k} differs"  # tensors and the stream position (TAG) after it
    assert all(b[TAG]["state"]["rank"] == rank for b in got)
    assert not workers()


@pytest.mark.parametrize("k", [1, 4, 17])
def test_resuming_from_the_kth_consumed_batch_continues_with_the_next(tmp_path: Path, tok: Any, k: int) -> None:
    """The worker is up to depth+1 batches ahead when batch k is trained: the checkpoint must not skip them."""
    spec = spec_for(write_rows(tmp_path / "train.jsonl", 90))
    whole = list(loader(spec, tok, 0)[1])
    stream, ahead = loader(spec, tok, 4)
    batches = iter(ahead)
    consumed = [next(batches) for _ in range(k)]
    time.sleep(0.3)  # let the worker fill its queue
    assert stream.state_dict() != consumed[-1][TAG]["state"]  # the stream itself has moved on
    ahead.close()
    assert not workers()
    _, resumed = loader(spec, tok, 2, state=json.loads(json.dumps(consumed[-1][TAG]["state"])))
    rest = list(resumed)
    assert len(consumed) + len(rest) == len(whole)
    assert all(same(a, b) for a, b in zip(consumed + rest, whole, strict=True))


def test_the_queue_is_bounded() -> None:
    made = []

    def source() -> Iterator[int]:
        for i in range(1000):
            made.append(i)
            yield i

    it = Prefetch(source(), depth=3)
    assert next(it) == 0
    time.sleep(0.5)
    assert len(made) <= 1 + 3 + 1  # consumed, queued, and the one waiting for room
    assert [next(it) for _ in range(10)] == list(range(1, 11))
    it.close()
    assert not it.alive and len(made) < 20


def test_a_worker_error_is_raised_in_the_loop_as_it_was_after_the_batches_before_it(tmp_path: Path, tok: Any) -> None:
    spec = spec_for(write_rows(tmp_path / "train.jsonl", 90, bad_at=(40,)), bad_rows={"policy": "fail"})
    _, plain = loader(spec, tok, 0)
    before = []
    with pytest.raises(DataError) as expected:
        for b in plain:
            before.append(b)
    _, ahead = loader(spec, tok, 2)
    got = []
    with pytest.raises(DataError) as raised:
        for b in ahead:
            got.append(b)
    assert str(raised.value) == str(expected.value) and "train.jsonl:41" in str(raised.value), str(raised.value)
    assert len(got) == len(before) and all(same(a, b) for a, b in zip(before, got, strict=True))
    assert not workers()


def test_close_stops_a_worker_blocked_on_a_full_queue_and_an_unclosed_one_is_collected() -> None:
    def endless() -> Iterator[int]:
        i = 0
        while True:
            i += 1
            yield i

    it = Prefetch(endless(), depth=2)
    next(it)
    it.close()
    assert not it.alive
    with pytest.raises(StopIteration):
        next(it)
    dropped = Prefetch(endless(), depth=2)
    next(dropped)
    del dropped  # the worker holds no reference to it: collected, the worker stops at its next put
    deadline = time.monotonic() + 5
    while workers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not workers()


def test_prefetch_refuses_loader_workers_and_a_zero_depth() -> None:
    with pytest.raises(ValueError, match="num_workers must be 0"):
        PrefetchLoader(list(range(4)), batch_size=2, num_workers=1, depth=2)
    with pytest.raises(ValueError, match="at least 1"):
        Prefetch(iter([1]), depth=0)


def test_a_new_iteration_stops_the_one_before_so_one_thread_reads_the_stream(tmp_path: Path, tok: Any) -> None:
    spec = spec_for(write_rows(tmp_path / "train.jsonl", 90))
    _, ahead = loader(spec, tok, 2)
    first = iter(ahead)
    next(first)
    second = iter(ahead)
    assert not first.alive and second.alive and len(workers()) == 1  # type: ignore[attr-defined]
    next(second)
    ahead.close()
    assert not workers()


def test_the_stream_gathers_across_ranks_on_the_main_thread_only(tmp_path: Path, tok: Any) -> None:
    """The worker may iterate and take positions; a collective from it would race the training loop's."""
    spec = spec_for(write_rows(tmp_path / "train.jsonl", 30))
    stream, _ = loader(spec, tok, 0)
    assert stream.stats().rows_read == 0  # the main thread: allowed
    seen: list[BaseException | dict[str, Any]] = []

    def off_main() -> None:
        try:
            next(iter(stream))
            seen.append(stream.state_dict())  # rank-local: allowed anywhere
            stream.stats()
        except BaseException as e:  # noqa: BLE001 - what the thread raised, for the assertion below
            seen.append(e)

    thread = threading.Thread(target=off_main, name="kubetune-prefetch")
    thread.start()
    thread.join()
    assert isinstance(seen[0], dict) and seen[0]["rank"] == 0
    assert isinstance(seen[1], RuntimeError) and "main thread only" in str(seen[1]), seen


def test_workers_left_running_are_stopped_and_joined_at_exit() -> None:
    """A worker still in torch code when the interpreter exits aborts it (SIGABRT); the exit hook joins it first."""
    from trainer.data import prefetch

    def endless() -> Iterator[torch.Tensor]:
        while True:
            yield torch.ones(256).cumsum(0)

    left = Prefetch(endless(), depth=2)
    next(left)
    prefetch._stop_all()  # what atexit runs
    assert not left.alive and not workers()


# The worker is inside torch code most of the time (its queue never fills): without the exit hook, 6 of 6 such
# processes aborted at exit here ("terminate called without an active exception", exit 134).
EXIT_SCRIPT = """
import torch
from trainer.data.prefetch import Prefetch
def endless():
    while True:
        yield torch.ones(256, 256).matmul(torch.ones(256, 256)).cumsum(0)
it = Prefetch(endless(), depth=64)
next(it)
print("leaving the worker running", flush=True)
"""


def test_a_process_that_exits_with_a_worker_running_exits_cleanly() -> None:
    root = Path(__file__).resolve().parents[2]
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT], capture_output=True, text=True, timeout=120,
                              cwd=root, env={**os.environ, "PYTHONPATH": str(root)})
        assert done.returncode == 0 and "leaving" in done.stdout, done.stderr[-2000:]
        assert "terminate called" not in done.stderr
