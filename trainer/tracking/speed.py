"""Trained tokens per second and model FLOPs utilisation (MFU), per logging step and for the whole run.

`Speed` counts, as each micro-batch trains, what its model FLOPs depend on: label positions (the trained tokens),
real tokens (not padding) and, per attention window of the model, the keys those tokens attend (a token at position
p of its sample attends p + 1 keys: packed samples never see each other). Rows a step runs forward only, under
no_grad (a preference objective's reference forward and KTO's KL rows: trainer/train/trl_adapter.py), are counted
apart and cost FORWARD / TRAIN (a third) of a trained row's FLOPs. At each log step `MeteredTrainer`
(trainer/tracking/tracker.py) sums the counts over ranks and asks `window` for the rates; the FLOPs come from
trainer/spec/flops.py, the formula `launch` shares (its convention is printed at start-up and in
docs/performance.md).

MFU = the window's model FLOPs / its seconds / world size / the peak FLOP/s of one device:
- on a GPU, the catalog's peak for the training dtype (trainer/spec/gpus.py: bf16/fp16 tensor-core, float32
  non-tensor), found from `torch.cuda.get_device_name`; a board not in the catalog: no MFU, said once;
- on CPU, measured once at start-up: the best rate of square matmuls in the training dtype at the model's hidden
  size and twice that (about 2 s).

A CPU peak that training itself exceeds was measured on a busier machine: it is measured again (at most
`REMEASURES` times), and the higher kept.

The time of evaluations and checkpoint saves inside a window is not counted (`on_evaluate` / `on_save` end the
pause that `on_step_end` starts); the data pipeline's time is.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import TrainerCallback

from trainer import say as out
from trainer.data.collator import pad_id_of
from trainer.data.render import IGNORE
from trainer.spec import flops
from trainer.spec.flops import FORWARD, TRAIN
from trainer.spec.gpus import board
from trainer.spec.job import JobSpec

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


REMEASURES = 3  # at most this many times a run measures its CPU peak again (Speed.window)


@dataclass(frozen=True)
class Peak:
    flops: float | None  # FLOP/s of one device; None: unknown, no MFU
    source: str  # where it comes from, or why it is unknown
    measure: Callable[[], tuple[float, str]] | None = None  # measures it (again): CPU only


def measure_cpu_peak(size: int, dtype: torch.dtype = torch.float32, budget: float = 2.0) -> tuple[float, str]:
    """The best FLOP/s of `size` and `2 x size` square matmuls in `dtype` within about `budget` seconds."""
    best, runs = 0.0, 0
    with torch.no_grad():
        for n in (size, 2 * size):
            a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
            out = torch.mm(a, b)  # warm-up: threads started, memory touched
            until = time.perf_counter() + budget / 2
            for i in range(100):
                started = time.perf_counter()
                torch.mm(a, b, out=out)
                best = max(best, 2 * n**3 / max(time.perf_counter() - started, 1e-9))
                runs += 1
                if i >= 2 and time.perf_counter() > until:
                    break
    return best, f"measured: best of {runs} {dtype_name(dtype)} matmuls {size}² and {2 * size}², " \
                 f"{torch.get_num_threads()} threads"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def device_peak(device: torch.device, dtype: str, hidden_size: int) -> Peak:
    """One device's peak FLOP/s for matmuls in `dtype`: the catalog's for a GPU, measured on CPU."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        gpu = board(name)
        if gpu is None:
            return Peak(None, f"GPU {name!r} is not in the catalog (trainer/spec/gpus.py)")
        peak = gpu.peak(dtype)
        kind = "dense tensor-core" if dtype != "float32" else "non-tensor"
        return Peak(peak, f"{gpu.label} {dtype} {kind} peak (trainer/spec/gpus.py)" if peak else
                    f"{gpu.label} has no {dtype} peak in the catalog (trainer/spec/gpus.py)")
    if device.type == "cpu":
        size = min(2048, max(256, -(-hidden_size // 128) * 128))  # the model's matmul size class
        measure = functools.partial(measure_cpu_peak, size, DTYPES[dtype])
        return Peak(*measure(), measure)
    return Peak(None, f"no peak known for {device.type} devices")


def batch_counts(inputs: dict[str, Any], pad_id: int, windows: tuple[int | None, ...]) -> torch.Tensor:
    """[label positions, real tokens, keys attended on a layer of each of `windows`] of one micro-batch; on the
    batch's device, without waiting for it."""
    ids, labels = inputs["input_ids"], inputs["labels"]
    mask = inputs.get("attention_mask")
    if mask is not None:  # one sample per row, padded
        real = mask.bool()
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    else:  # packed: positions restart at each sample; the padding at a row's end is a segment of its own
        positions = inputs.get("position_ids")
        if positions is None:
            positions = torch.arange(ids.shape[-1], device=ids.device).expand_as(ids)
        real = ~trailing_padding(ids, labels, positions, pad_id)
    keys = positions.long() + 1
    zero = torch.zeros((), dtype=torch.long, device=ids.device)
    parts = [(labels != IGNORE).sum(), real.sum()]
    parts += [torch.where(real, keys if w is None else keys.clamp(max=w), zero).sum() for w in windows]
    return torch.stack(parts)


def trailing_padding(ids: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Where a packed row's trailing padding is: its last segment, when that is pad ids without labels."""
    segment = (positions == 0).long().cumsum(-1)
    last = segment == segment[..., -1:]
    filler = (ids == pad_id) & (labels == IGNORE)
    padded = ~(last & ~filler).any(-1, keepdim=True)
    return last & padded


class Speed(TrainerCallback):
    """The rates of one run: counts each micro-batch (`add`), turns a log step's counts into rates (`window`), keeps
    the run's totals (`summary`), and pauses the clock while the Trainer evaluates or saves."""

    def __init__(self, cost: flops.ModelFlops | None, peak: Peak, labelled_head: bool, pad_id: int,
                 say: Callable[[str], None] = out.say):
        self.cost, self.peak, self.say = cost, peak, say
        self.remeasured = 0
        self.labelled_head = labelled_head  # the LM head runs at label positions only (any `training.loss` but full)
        self.pad_id = pad_id
        self.kinds: tuple[int | None, ...] = tuple(dict.fromkeys(cost.windows)) if cost else ()
        self._pending: torch.Tensor | None = None
        self._paused, self._mark = 0.0, None
        self.tokens, self.seconds, self.flops = 0, 0.0, 0

    @classmethod
    def for_run(cls, model: Any, spec: JobSpec, device: torch.device, tokenizer: Any, say: Callable[[str], None],
                tracker: Any, labelled_head: bool | None = None) -> Speed:
        """The meter for this model and spec; what it counts against said once, and logged (`tracker.log_metrics`).
        `labelled_head`: whether the LM head runs at label positions only (default: any `training.loss` but full,
        trainer/train/head.py; a preference trainer says for itself)."""
        config = model.config.to_dict()
        text = config.get("text_config") or config
        try:
            cost: flops.ModelFlops | None = flops.from_config(config)
        except flops.UnknownModel as e:
            cost, unknown = None, f"MFU not reported: {e}"
        else:
            count = getattr(model, "get_nb_trainable_parameters", None)  # PEFT's count (ZeRO-3 shards included)
            trainable = count()[0] if count else 0
            cost, unknown = cost.with_adapter(trainable), ""
        peak = device_peak(device, spec.model.dtype, int(text.get("hidden_size") or 1024))
        if cost is not None and peak.flops is None:
            unknown = f"MFU not reported: {peak.source}"
        if labelled_head is None:
            labelled_head = spec.training.loss != "full"
        speed = cls(cost, peak, labelled_head, pad_id_of(tokenizer), say)
        say(unknown or speed.describe(spec.data.max_seq_len))
        tracker.log_metrics(speed.constants(spec.data.max_seq_len), step=0)
        return speed

    def describe(self, sample_length: int) -> str:
        assert self.cost is not None and self.peak.flops is not None
        head = "label position" if self.labelled_head else "position"
        return (f"MFU against {self.peak.flops / 1e12:.3g} TFLOP/s ({self.peak.source}); model FLOPs "
                f"{self.cost.per_token(sample_length, 0.0) / 1e9:.3g} G per token at {sample_length}-token samples "
                f"+ {flops.dense_flops(self.cost.head_params, 1) / 1e9:.3g} G per {head} for the LM head "
                f"({flops.CONVENTION})")

    # -- counting, on every rank ---------------------------------------------------------
    def add(self, inputs: dict[str, Any], forward_only: bool = False) -> None:
        """One micro-batch's rows (`input_ids`, `labels`, `attention_mask` or `position_ids`): trained (forward and
        backward), or run `forward_only` (under no_grad)."""
        counts = batch_counts(inputs, self.pad_id, self.kinds)
        both = torch.cat([torch.zeros_like(counts), counts] if forward_only else [counts, torch.zeros_like(counts)])
        self._pending = both if self._pending is None else self._pending + both

    def take(self, device: torch.device) -> torch.Tensor:
        """The counts since the last call (zeros when none), to sum over ranks: the trained rows', then the
        forward-only rows'."""
        pending, self._pending = self._pending, None
        return pending.to(device) if pending is not None else torch.zeros(2 * (2 + len(self.kinds)), dtype=torch.long,
                                                                          device=device)

    def take_paused(self) -> float:
        paused, self._paused = self._paused, 0.0
        return paused

    def window(self, counts: list[int], seconds: float, world_size: int) -> dict[str, float]:
        """Rates of one log step's counts (summed over ranks, as `take` lays them out) in `seconds`; adds them to the
        run's totals."""
        half = len(counts) // 2
        trained, real, *keys = counts[:half]
        ahead, ahead_real, *ahead_keys = counts[half:]  # forward-only rows: their labels are where the head runs
        self.tokens += trained
        self.seconds += seconds
        if self.cost is None:
            return {}
        done = self.cost.train_flops(real, trained if self.labelled_head else real, dict(zip(self.kinds, keys, strict=True)))
        if ahead_real:
            forward = self.cost.train_flops(ahead_real, ahead if self.labelled_head else ahead_real,
                                            dict(zip(self.kinds, ahead_keys, strict=True)))
            done += forward * FORWARD // TRAIN
        self.flops += done
        rate = done / seconds / world_size  # per device
        out = {"model_tflops": rate / 1e12}
        if self.peak.flops and rate > self.peak.flops and self.peak.measure and self.remeasured < REMEASURES:
            out["peak_flops"] = self._measure_again(rate)
        return out | ({"mfu": rate / self.peak.flops} if self.peak.flops else {})

    def _measure_again(self, rate: float) -> float:
        """A CPU peak below what training itself reached was measured on a busier machine: measure it again, keep
        the higher; the windows already logged keep theirs."""
        assert self.peak.flops is not None and self.peak.measure is not None
        self.remeasured += 1
        again, how = self.peak.measure()
        before, self.peak = self.peak.flops, Peak(max(again, self.peak.flops), how, self.peak.measure)
        self.say(f"MFU: training reached {rate / 1e12:.3g} TFLOP/s, above the {before / 1e12:.3g} TFLOP/s CPU peak "
                 f"measured before (the machine was busier then); measured again: {again / 1e12:.3g} TFLOP/s ({how}), "
                 f"MFU from now on against {self.peak.flops / 1e12:.3g}")
        return self.peak.flops

    def summary(self, world_size: int) -> dict[str, float]:
        """The whole run's trained tokens per second and MFU (over the logged windows)."""
        if self.seconds <= 0:
            return {}
        out = {"tokens_per_second": self.tokens / self.seconds}
        if self.cost is not None and self.peak.flops:
            out["mfu"] = self.flops / self.seconds / world_size / self.peak.flops
        return out

    def constants(self, sample_length: int) -> dict[str, float]:
        """What MFU is computed with, logged once: the peak FLOP/s, the model FLOPs per token (no LM head) at
        `sample_length`-token samples, and per position of the LM head."""
        out = {"peak_flops": self.peak.flops} if self.peak.flops else {}
        if self.cost is not None:
            out |= {"flops_per_token": self.cost.per_token(sample_length, 0.0),
                    "flops_per_head_position": float(flops.dense_flops(self.cost.head_params, 1))}
        return out

    def summary_text(self, world_size: int) -> str:
        """The run's rates in words, e.g. `1,234 trained tokens/s, MFU 23.4%`."""
        done = self.summary(world_size)
        if not done:
            return "no trained tokens/s (no step was timed)"
        mfu = f", MFU {done['mfu']:.1%}" if "mfu" in done else ""
        return f"{done['tokens_per_second']:,.0f} trained tokens/s{mfu}"

    # -- the clock's pauses (callback hooks) ----------------------------------------------
    def on_step_end(self, args, state, control, **kwargs):
        self._mark = time.perf_counter()

    def on_step_begin(self, args, state, control, **kwargs):
        self._mark = None

    def _pause(self) -> None:
        if self._mark is not None:
            now = time.perf_counter()
            self._paused += now - self._mark
            self._mark = now

    def on_evaluate(self, args, state, control, **kwargs):
        self._pause()

    def on_save(self, args, state, control, **kwargs):
        self._pause()
