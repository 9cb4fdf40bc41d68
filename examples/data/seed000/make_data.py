"""Writes seed 000's example data: one small dataset per data-governance dimension.

Each row is a `messages` conversation: the user pastes a finding from a data-quality report and asks
for an assessment along one dimension; the assistant answers in a fixed shape,

    Dimension: completeness
    Rating: 2/5 (poor)
    Evidence: 18% of customer rows have no postcode.
    Action: make postcode required at signup and backfill from the billing address.

so that each dimension's adapter visibly learns its own rubric. Ratings are computed from the numbers in
the finding, not typed. Run from the repo root: python examples/data/seed000/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent
SYSTEM = "You assess data governance reports along one dimension and answer in the fixed rubric."
TABLES = ["customer", "order", "invoice", "shipment", "product", "supplier", "payment", "employee"]
FIELDS = ["postcode", "email", "phone", "tax id", "birth date", "country", "currency", "status"]
LABELS = {1: "critical", 2: "poor", 3: "fair", 4: "good", 5: "excellent"}

# dimension -> (finding template, what the percentage measures (higher is worse?), action template)
DIMENSIONS: dict[str, tuple[str, bool, str]] = {
    "accuracy": ("{p}% of {t} rows have a {f} that does not match the system of record.", True,
                 "reconcile {f} against the system of record nightly and correct the {t} rows that differ."),
    "completeness": ("{p}% of {t} rows have no {f}.", True,
                     "make {f} required when a {t} is created and backfill the missing values."),
    "consistency": ("{p}% of {t} rows store {f} in a different format than the {u} table.", True,
                    "agree one format for {f} and convert the {t} table to it."),
    "timeliness": ("{p}% of {t} updates reach the warehouse more than a day late.", True,
                   "move the {t} feed to hourly loads and alert when a load is late."),
    "validity": ("{p}% of {t} rows have a {f} that fails its format rule.", True,
                 "validate {f} at entry and quarantine the {t} rows that fail."),
    "uniqueness": ("{p}% of {t} rows are duplicates by {f}.", True,
                   "merge the duplicate {t} rows and add a unique key on {f}."),
    "lineage": ("{p}% of {t} columns have a documented upstream source.", False,
                "document the source of every {t} column in the catalogue, {f} first."),
    "privacy": ("{p}% of {t} rows holding {f} are encrypted at rest.", False,
                "encrypt {f} in the {t} table and restrict who can read it."),
}


def rating(percent: int, higher_is_worse: bool) -> int:
    good = 100 - percent if higher_is_worse else percent  # the share that is as it should be
    return 1 if good < 60 else 2 if good < 80 else 3 if good < 90 else 4 if good < 98 else 5


def row(dimension: str, rng: random.Random) -> dict:
    finding, worse, action = DIMENSIONS[dimension]
    t, u = rng.sample(TABLES, 2)
    f = rng.choice(FIELDS)
    p = rng.choice([1, 2, 3, 5, 8, 12, 18, 25, 35, 45]) if worse else rng.choice([40, 55, 70, 85, 92, 99])
    text = finding.format(p=p, t=t, f=f, u=u)
    r = rating(p, worse)
    answer = (f"Dimension: {dimension}\nRating: {r}/5 ({LABELS[r]})\nEvidence: {text}\n"
              f"Action: {action.format(t=t, f=f, u=u).capitalize()}")
    return {"messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": f"Report finding: {text}\nAssess the {dimension} of this data."},
        {"role": "assistant", "content": answer},
    ]}


def main() -> None:
    for i, dimension in enumerate(DIMENSIONS):
        rng = random.Random(i)
        rows, seen = [], set()
        while len(rows) < 36:
            r = row(dimension, rng)
            key = r["messages"][1]["content"]
            if key not in seen:
                seen.add(key)
                rows.append(r)
        folder = HERE / dimension
        folder.mkdir(exist_ok=True)
        for name, part in (("train.jsonl", rows[:32]), ("eval.jsonl", rows[32:])):
            (folder / name).write_text("".join(json.dumps(x) + "\n" for x in part), encoding="utf-8")
        print(f"{dimension}: {len(rows[:32])} train, {len(rows[32:])} eval rows")


if __name__ == "__main__":
    main()
