"""The training job's live progress (trainer/tracking/progress.py), published by rank 0 at every logging step.

The numbers are those already in the Trainer's log line: loss and learning rate; trained tokens, tokens/s and MFU
(`MeteredTrainer`, trainer/tracking/speed.py); step, total steps and epoch from the Trainer's state. The ETA is the
steps left at the rate of the steps since the first log of this process (a resumed job's starts at its checkpoint):
the first step's start-up costs do not stretch it.
"""

from __future__ import annotations

import time
from typing import Any

from transformers import TrainerCallback

from trainer.tracking.progress import Publisher, payload


def _number(logs: dict[str, Any], key: str) -> float | None:
    value = logs.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class ProgressCallback(TrainerCallback):
    """Publishes `phase: training` progress on each log step with a loss; the last one, forced, at train end."""

    def __init__(self, publisher: Publisher | None = None, clock: Any = time.monotonic):
        self.publisher, self.clock = publisher or Publisher(), clock  # by default, where the environment says
        self.first: tuple[int, float] | None = None  # (step, time) of this process's first logged step
        self.last: dict[str, Any] | None = None

    def eta(self, step: int, total: int) -> float | None:
        now = self.clock()
        if self.first is None:
            self.first = (step, now)
            return None
        done, seconds = step - self.first[0], now - self.first[1]
        if done <= 0 or seconds <= 0:
            return None
        return max(0.0, (total - step) * seconds / done)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs or not self.publisher.active:
            return
        step, total = int(state.global_step), int(state.max_steps or 0)
        self.last = payload(
            "training", step=step, total_steps=total or None, epoch=state.epoch, eta_seconds=self.eta(step, total),
            trained_tokens=_number(logs, "tokens_trained"), tokens_per_second=_number(logs, "tokens_per_second"),
            loss=_number(logs, "loss"), learning_rate=_number(logs, "learning_rate"), mfu=_number(logs, "mfu"))
        self.publisher.publish(self.last)

    def on_train_end(self, args, state, control, **kwargs):
        if not state.is_world_process_zero or not self.publisher.active:
            return
        if self.last is not None:  # where training stopped: the end, or a preemption's step
            step = int(state.global_step)
            left = max(0, int(state.max_steps or 0) - step)
            self.last = self.last | {"step": step, "epoch": state.epoch, "updated": time.time(),
                                     "eta_seconds": 0.0 if not left else self.last["eta_seconds"]}
            self.publisher.publish(self.last)
        self.publisher.close()
