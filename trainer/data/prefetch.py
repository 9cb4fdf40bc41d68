"""Training batches made ahead of the training step by a background thread (`training.prefetch`).

Without it the Trainer reads, renders, tokenizes, packs and collates each step's micro-batches in
the training loop, between two steps, and a step that needs a new packing window waits for all of
it (on an H200, 1-2 steps in 20 stalled 1.2-2.2 s against a 0.36 s median). `PrefetchLoader` is the
same DataLoader (`num_workers=0`, same dataset, collator, batch size) whose iteration runs in a
daemon thread, at most `depth` batches ahead in a bounded queue: memory stays flat, and the
batches, their order and their contents are exactly those of the loop without it.

Why a thread, not a process. Measured on the real stream (Qwen2.5 chat template and tokenizer,
bench/streaming.py `--prefetch`): the tokenizer's Rust batch call, which releases the GIL, is about a
fifth of the stream's time; rendering (Jinja), turn matching and packing hold it. A thread therefore
takes some of the GIL from the training loop while it works (on a GPU the loop mostly waits for
kernels, and the data worker is busy a small part of each step). A process avoids that, but its
stream would have to travel to it: forking after the S3 filesystem started is refused by fsspec
("not fork-safe"), forking after the tokenizer ran turns its parallelism off, and spawning pickles
the tokenizer and template into a fresh interpreter that imports torch again. The thread keeps the
stream where it is, so nothing about the data path changes but the thread that runs it.

Exact resume. The position of the stream travels on each batch (trainer/train/datastate.py,
`Tagged`): the worker takes it right after the batch's rows, and the Trainer keeps the one of the
last batch it trained. The batches waiting in the queue are not trained and not in any checkpoint;
a resumed run produces them again. After training, `ResumableTrainer` loads the last trained
position back into the stream, so its row accounting counts what was trained, not what was made.

Shutdown. `close()` (at the end of training, on an error, after a SIGTERM stop: `ResumableTrainer.train`'s
`finally`) tells the worker to stop, empties the queue and joins the thread; the worker never blocks on
a full queue (it polls the stop flag) and stops at its next batch. A new iteration of the loader closes
the ones before it first: one thread at a time reads the stream. A failure in the worker (a `DataError`
naming bad rows, an S3 error) is queued in order and raised in the training loop as the same exception
object, with its message and traceback, where the loop without prefetch would have raised it. Signals
go to the main thread only; the worker needs none.

No collectives in the worker. The worker only reads the rank's own stream and takes its rank-local
position (`TrainStream.state_dict`); whatever gathers across ranks (`count_pass`, `steps_left`,
`stats`, `finish`, the checkpoint's per-rank states) runs on the main thread, and `TrainStream` refuses
a gather from any other thread. The process group is destroyed after training, once this thread is
joined (trainer/train/preemption.py `release_process_group`): left to the interpreter's exit, gloo's
teardown aborted a 2-rank CPU run now and then ("terminate called without an active exception"),
with or without this thread. And a thread still running torch code when the interpreter exits aborts it
the same way, so an `atexit` hook stops and joins every worker still alive then (one whose `close()`
timed out, or that nothing closed).
"""

from __future__ import annotations

import atexit
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

from torch.utils.data import DataLoader

from trainer import say

T = TypeVar("T")
POLL = 0.1  # seconds between checks of the stop flag while the queue is full (worker) or empty (consumer)
JOIN_TIMEOUT = 120.0  # seconds close() waits for the worker to finish the batch it is making


_RUNNING: dict[threading.Thread, threading.Event] = {}  # every worker started, with its stop flag


@atexit.register
def _stop_all() -> None:
    """At exit, before the interpreter tears down: no worker may be left inside torch code."""
    for stop in _RUNNING.values():
        stop.set()
    for thread in list(_RUNNING):
        thread.join(JOIN_TIMEOUT)
    _RUNNING.clear()


class _End:
    """Queued after the last item."""


class _Failure:
    """Queued in place of the item whose making raised."""

    def __init__(self, error: BaseException):
        self.error = error


def _work(source: Iterable[Any], q: queue.Queue[Any], stop: threading.Event) -> None:
    """The worker thread: every item of `source`, then `_End`; or a `_Failure` where making one raised."""
    it = None
    try:
        it = iter(source)  # in the worker: a DataLoader's iterator is made (and runs) here
        for item in it:
            if not _put(q, stop, item) or stop.is_set():  # told to stop: make nothing more
                return
        _put(q, stop, _End())
    except BaseException as e:  # noqa: BLE001 - every failure reaches the consumer, as it was raised
        _put(q, stop, _Failure(e))
    finally:
        close = getattr(it, "close", None)
        if callable(close):  # a generator's `finally` clauses run now, in this thread
            close()


def _put(q: queue.Queue[Any], stop: threading.Event, item: Any) -> bool:
    """Queue `item` once there is room; False when told to stop first."""
    while not stop.is_set():
        try:
            q.put(item, timeout=POLL)
            return True
        except queue.Full:
            continue
    return False


class Prefetch(Iterator[T], Generic[T]):
    """Iterates `source` in a daemon thread, at most `depth` items ahead; `next()` returns them in order.

    `waited` is the time `next()` spent waiting for the worker (seconds): data the step waited for."""

    def __init__(self, source: Iterable[T], depth: int, name: str = "kubetune-prefetch"):
        if depth < 1:
            raise ValueError(f"prefetch depth must be at least 1, got {depth}")
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self.waited = 0.0
        # The worker holds the queue and the flag, not this object: one dropped unclosed is collected and stops it.
        self._thread = threading.Thread(target=_work, args=(source, self._queue, self._stop), name=name, daemon=True)
        for thread in [t for t in _RUNNING if not t.is_alive()]:
            del _RUNNING[thread]
        _RUNNING[self._thread] = self._stop
        self._thread.start()

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        started = time.perf_counter()
        while True:
            try:
                item = self._queue.get(timeout=POLL)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._done = True
                    raise RuntimeError("the prefetch worker stopped without a last batch or an error") from None
        self.waited += time.perf_counter() - started
        if isinstance(item, _End):
            self.close()
            raise StopIteration
        if isinstance(item, _Failure):
            self.close()
            raise item.error
        return item

    def close(self) -> None:
        """Stop the worker, drop what it made ahead and wait for it to exit (idempotent)."""
        self._done = True
        self._stop.set()
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(JOIN_TIMEOUT)
            if self._thread.is_alive():
                say.warn(
                    f"the data prefetch worker did not stop within {JOIN_TIMEOUT:.0f}s; leaving it (a daemon "
                    "thread: it does not keep the process alive; the exit waits for it once more)"
                )

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)  # None: __init__ refused its arguments
        if stop is not None:
            stop.set()  # the worker exits at its next put; nothing to wait for here


class PrefetchLoader(DataLoader):
    """A DataLoader whose iteration runs `depth` batches ahead in a background thread (0: as DataLoader does).

    Only `num_workers=0`: the loader's own worker processes would split the stream (trainer/data/stream.py)."""

    def __init__(self, *args: Any, depth: int, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if depth and self.num_workers:
            raise ValueError("prefetch runs the loader in one thread: num_workers must be 0")
        self.depth = depth
        # Held, not weakly: an iteration the Trainer let go of (the last one, when max_steps ends training) is
        # still stopped and joined by `close`; a new iteration closes the one before.
        self._live: list[Prefetch[Any]] = []

    def _batches(self) -> Iterator[Any]:
        yield from DataLoader.__iter__(self)

    def __iter__(self) -> Iterator[Any]:
        if not self.depth:
            return DataLoader.__iter__(self)
        self.close()  # the stream continues in the new iteration only (trainer/data/stream.py): one reader at a time
        it: Prefetch[Any] = Prefetch(self._batches(), self.depth)
        self._live = [it]
        return it

    def close(self) -> None:
        """Stop every iteration still running ahead (the Trainer leaves its last one open)."""
        for it in self._live:
            it.close()
        self._live = []
