"""What the Trainer's log entries become: MLflow metrics (`numeric`) and one readable line per log step on rank 0
(`ProgressPrinter`); and the trained tokens of a micro-batch (`trained_tokens`), for every objective's batch layout."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers import TrainerCallback

from trainer import say as out

# The preference objectives' (TRL's) reward metrics shown on each log line, and their short names.
REWARDS = {"rewards/accuracies": "reward_acc", "rewards/margins": "margin"}


def trained_tokens(inputs: dict[str, Any]) -> torch.Tensor:
    """Positions whose token is trained: SFT's labels != -100; TRL's DPO/KTO `completion_mask`; ORPO's answer labels."""
    if "labels" in inputs:
        return (inputs["labels"] != -100).sum()
    if "completion_mask" in inputs:
        return inputs["completion_mask"].sum()
    return sum((inputs[f"{side}_labels"] != -100).sum() for side in ("chosen", "rejected"))  # type: ignore[return-value]


def preference_eval(logs: dict[str, Any]) -> bool:
    return any(k.startswith("eval_rewards/") for k in logs)


def numeric(logs: dict[str, Any]) -> dict[str, float]:
    """The Trainer's log entries that are metrics, with eval perplexity added."""
    out = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if "eval_loss" in out and not preference_eval(out):  # a preference loss has no perplexity
        out["eval_perplexity"] = math.exp(min(out["eval_loss"], 50.0))
    return out



class ProgressPrinter(TrainerCallback):
    """One readable line per log step on rank 0, instead of progress bars."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        step = f"step {state.global_step}/{state.max_steps}"
        rewards = "".join(f" {short} {logs[key]:.3f}" for key, short in REWARDS.items() if key in logs)
        if "loss" in logs:
            tps, mfu = logs.get("tokens_per_second"), logs.get("mfu")
            out.say(f"{step} loss {logs['loss']:.4f} lr {logs.get('learning_rate', 0):.2e} "
                    f"grad_norm {logs.get('grad_norm', float('nan')):.3f}" + rewards
                    + (f" tokens/s {tps:,.0f}" if tps else "") + (f" MFU {mfu:.1%}" if mfu is not None else ""),
                    tag="train")
        elif "eval_loss" in logs and preference_eval(logs):
            out.say(f"{step} loss {logs['eval_loss']:.4f}" + "".join(
                f" {short} {logs['eval_' + key]:.3f}" for key, short in REWARDS.items() if "eval_" + key in logs),
                tag="eval")
        elif "eval_loss" in logs:
            out.say(f"{step} loss {logs['eval_loss']:.4f} perplexity {numeric(logs)['eval_perplexity']:.2f}",
                    tag="eval")


