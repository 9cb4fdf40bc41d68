"""`launch data validate` for preference data (`data.format: preference | unpaired`, docs/preference.md).

Rows are read the way the trainer reads them (trainer/data/preference.py: the spec's sources, the chat
template and tokenizer), and the report says: rows read, used and bad by reason with examples
(file:line), the preference pairs (dpo / orpo) or desirable / undesirable rows (kto), answers cut to
fit, and token lengths of the prompts, answers and longest rows. A split fails (exit 2) as an SFT one
does (launcher/datacheck.py `policy_problems`). The trainer's modules are imported when a report is made.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from launcher.datacheck import _files, _names, policy_problems
from launcher.errors import UserError
from trainer.data.badrows import BadRowLog
from trainer.data.errors import DataError
from trainer.data.preference_stats import PreferenceStats
from trainer.spec.data import BadRowsSpec
from trainer.spec.job import JobSpec


@dataclass
class PreferenceReport:
    stats: PreferenceStats
    sampled: bool  # stopped after `--sample` rows: the file(s) hold more
    problems: list[str]
    warnings: list[str] = field(default_factory=list)  # what would not stop the job but makes it worse

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self.stats), "sampled": self.sampled, "problems": self.problems, "warnings": self.warnings}

    def lines(self) -> list[str]:
        out = self.stats.report(examples=len(self.stats.bad_examples)).splitlines()
        if self.sampled:
            out.insert(1, "  (--sample: the first rows only)")
        return out + [f"  warning: {w}" for w in self.warnings] + [f"  problem: {p}" for p in self.problems]


def preference_report(spec: JobSpec, split: str, tokenizer: Any, spec_dir: Path, sample: int | None) -> PreferenceReport:
    """Read `sample` rows (None: all) of one split of preference data through template and tokenizer."""
    from trainer.data.preference import PreferenceEncoder, read_split

    files = _files(spec, split, spec_dir)
    try:
        encoder = PreferenceEncoder(tokenizer, spec.data)
    except DataError as e:
        raise UserError(f"{spec.base_model}: {e}") from None
    log = BadRowLog(BadRowsSpec(policy="skip", max_bad_fraction=1.0), split)  # the policy is judged below
    try:
        _, stats, sampled = read_split(spec, encoder, files, log, split, sample)
    except DataError as e:
        raise UserError(str(e)) from None
    problems = policy_problems(split, stats.rows_read, stats.bad_total, spec.data.bad_rows, _names(files))
    return PreferenceReport(stats, sampled, problems)
