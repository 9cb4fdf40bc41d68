"""The spec's `preference` section and `training.objective`'s rules: DPO, ORPO and KTO through TRL's trainers.

Part of THE job spec (trainer/spec/job.py). Torch-free. `preference_problems` is JobSpec's check of the fields that
an objective uses, cannot use or needs: nothing set is ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from trainer.spec.base import Section

if TYPE_CHECKING:
    from trainer.spec.job import JobSpec

Objective = Literal["sft", "dpo", "orpo", "kto"]
PREFERENCE_OBJECTIVES = ("dpo", "orpo", "kto")
# TRL 1.16's DPOTrainer loss types (trl/trainer/dpo_trainer.py); `sigmoid` is the DPO paper's.
DpoLoss = Literal["sigmoid", "ipo", "hinge", "robust", "sigmoid_norm", "bco_pair", "nca_pair", "sppo_hard",
                  "apo_zero", "apo_down", "exo_pair", "discopop"]
SMOOTHED = ("sigmoid", "robust", "exo_pair")  # the DPO losses that read label_smoothing


class PreferenceSpec(Section):
    """Settings of `training.objective: dpo | orpo | kto` (left out: the defaults below)."""

    beta: float = Field(
        0.1, gt=0, le=100,
        description="DPO and KTO: how far the policy may move from the reference (larger: closer to it). ORPO: the "
        "weight of the odds-ratio term next to the chosen answers' cross-entropy (ORPO paper's lambda).",
    )
    loss_type: DpoLoss = Field(
        "sigmoid",
        description="DPO only: TRL's DPO loss. `sigmoid` (the DPO paper), `ipo` (per-token-averaged IPO), `hinge` "
        "(SLiC), `robust` (noisy labels: with `label_smoothing`), `sigmoid_norm` (length-normalised), `bco_pair`, "
        "`nca_pair`, `sppo_hard`, `apo_zero` / `apo_down` (anchored), `exo_pair` (needs `label_smoothing` > 0), "
        "`discopop`.",
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5,
        description="DPO only (`sigmoid`, `robust`, `exo_pair`): the assumed fraction of pairs whose preference "
        "is flipped (conservative DPO).",
    )
    sft_weight: float = Field(
        0.0, ge=0, le=100,
        description="DPO only: add the chosen answers' cross-entropy (TRL's `sft` loss, as in RPO) with this weight "
        "to the DPO loss. DPO alone only widens the gap between the answers, and can do so by making both less "
        "likely, the chosen ones too, until the model's own answers degrade; this term keeps the chosen answers "
        "likely. 0: off; 1 is RPO's usual weight.",
    )
    precompute_reference: bool = Field(
        False,
        description="DPO and KTO: compute the reference model's log-probabilities of every training (and eval) row "
        "once, before training, instead of a reference forward per step: each step is then one forward + backward "
        "instead of two forwards + backward, for one pass over the data at the start. For large runs.",
    )
    desirable_weight: float = Field(
        1.0, gt=0, description="KTO only: weight of the desirable (`label: true`) rows' loss."
    )
    undesirable_weight: float = Field(
        1.0, gt=0, description="KTO only: weight of the undesirable (`label: false`) rows' loss."
    )
    dropout: Literal["off", "adapter"] = Field(
        "off",
        description="`off` (TRL's default): dropout is switched off in the model while training, the adapter's "
        "(`adapter.dropout`) included, so that the policy's and the reference's log-probabilities of a row differ "
        "only by the weights; `adapter`: keep `adapter.dropout` on the LoRA path.",
    )


# Fields of `preference` that only some objectives read, and which.
ONLY_FOR: dict[str, tuple[str, ...]] = {
    "loss_type": ("dpo",), "label_smoothing": ("dpo",), "sft_weight": ("dpo",), "precompute_reference": ("dpo", "kto"),
    "desirable_weight": ("kto",), "undesirable_weight": ("kto",),
}
FORMATS: dict[str, tuple[str, ...]] = {"sft": ("messages", "sharegpt", "instruction", "template"),
                                       "dpo": ("preference",), "orpo": ("preference",),
                                       "kto": ("unpaired", "preference")}


def preference_problems(spec: JobSpec) -> list[str]:
    """What `training.objective` cannot do with the rest of the spec, each naming the field and the fix."""
    objective = spec.training.objective
    if objective == "sft":
        problems = []
        if spec.preference != PreferenceSpec():  # a resolved spec has every field set: compared with the defaults
            problems.append("preference: its settings are for `training.objective: dpo`, `orpo` or `kto` (the "
                            "objective is `sft`): set the objective, or leave out the preference section")
        if spec.data.format not in FORMATS["sft"]:
            problems.append(f"data.format: `{spec.data.format}` rows are preference data: train them with "
                            "`training.objective: dpo`, `orpo` (paired) or `kto`")
        return problems
    return _preference_problems(spec, objective)


def _preference_problems(spec: JobSpec, objective: str) -> list[str]:
    problems = []
    p, data, training = spec.preference, spec.data, spec.training
    if data.format not in FORMATS[objective]:
        problems.append(
            f"data.format: `{data.format}` is not preference data, which `training.objective: {objective}` trains on: "
            f"set data.format to {' or '.join(f'`{f}`' for f in FORMATS[objective])} (docs/preference.md)")
    defaults = PreferenceSpec()
    for field, objectives in ONLY_FOR.items():
        if getattr(p, field) != getattr(defaults, field) and objective not in objectives:
            problems.append(f"preference.{field}: read by `training.objective: {' / '.join(objectives)}` only (the "
                            f"objective is `{objective}`): leave it out")
    if p.loss_type == "exo_pair" and p.label_smoothing == 0:
        problems.append("preference.loss_type: `exo_pair` needs preference.label_smoothing > 0 (the EXO paper uses "
                        "0.001)")
    if p.label_smoothing and p.loss_type not in SMOOTHED:
        problems.append(f"preference.label_smoothing: the `{p.loss_type}` loss does not read it; it is read by "
                        f"{', '.join(f'`{s}`' for s in SMOOTHED)}")
    # `data.packing` (default true) does not apply: each pair is a padded row (the trainer says so at start).
    unused = {"train_on": data.train_on != "completions", "reasoning": data.reasoning == "mask"}
    fixes = {"train_on": "the objective compares the answers' log-probabilities: the prompt is never trained",
             "reasoning": "the objective scores the whole generated turn, reasoning included: use `train`"}
    for field, on in unused.items():
        if on:
            problems.append(f"data.{field}: `{str(getattr(data, field)).lower()}` does not apply to "
                            f"`training.objective: {objective}` ({fixes[field]}): leave it out")
    if objective == "kto" and training.per_device_batch_size < 2:
        problems.append("training.per_device_batch_size: `kto` needs at least 2 (its KL term pairs each row's answer "
                        "with another row's prompt of the same micro-batch): set 2 or more")
    if training.padding_free:
        problems.append(f"training.padding_free: not available with `training.objective: {objective}` (TRL's "
                        "preference trainers pad their batches): set it to false")
    if training.loss != "chunked":
        problems.append(f"training.loss: `{training.loss}` is the SFT loss's setting; `training.objective: "
                        f"{objective}` computes its log-probabilities with TRL's own fused head: leave it out")
    return problems
