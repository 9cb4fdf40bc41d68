"""Writes the DPO quickstart's preference pairs: the quickstart's exact format over sloppy answers.

Each row is one pair in `data.format: preference` (docs/preference.md):

    {"prompt": [{"role": "user", "content": "What is the capital of Peru?"}],
     "chosen": [{"role": "assistant", "content": "ANSWER: Lima\\nBECAUSE: Lima is the capital city of Peru."}],
     "rejected": [{"role": "assistant", "content": "answer: Lima\\nbecause: Lima is the capital city of Peru."}]}

The questions are new questions of the quickstart's kinds (none is a quickstart question: the quickstart's tables
are used up, so capitals, opposites and words come from new tables here). The chosen answer is the exact
`ANSWER: ...` / `BECAUSE: ...` format; the rejected one is a mistake an SFT model of a few dozen steps plausibly
makes, one of REJECTED_KINDS in turn, so each kind is 1/8 of each file (train: 25 of 200, eval: 3 of 24).
Deterministic. Run from the repo root: python examples/data/make_preference_data.py
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path

from make_quickstart_data import CAPITALS, OPPOSITES, arithmetic, capital, larger, letters, minutes, opposite

HERE = Path(__file__).parent
TRAIN_PAIRS, EVAL_PAIRS = 200, 24
MORE_CAPITALS = {
    "Netherlands": "Amsterdam", "Switzerland": "Bern", "Czechia": "Prague", "Romania": "Bucharest",
    "Bulgaria": "Sofia", "Croatia": "Zagreb", "Serbia": "Belgrade", "Ukraine": "Kyiv", "Iceland": "Reykjavik",
    "Estonia": "Tallinn", "Latvia": "Riga", "Lithuania": "Vilnius", "South Korea": "Seoul", "Indonesia": "Jakarta",
    "Philippines": "Manila", "Malaysia": "Kuala Lumpur", "Pakistan": "Islamabad", "Iran": "Tehran",
    "Iraq": "Baghdad", "Saudi Arabia": "Riyadh", "Ethiopia": "Addis Ababa", "Ghana": "Accra", "Senegal": "Dakar",
    "Tunisia": "Tunis", "Venezuela": "Caracas", "Ecuador": "Quito", "Uruguay": "Montevideo",
    "New Zealand": "Wellington", "Nepal": "Kathmandu", "Jordan": "Amman", "Slovakia": "Bratislava",
    "Slovenia": "Ljubljana",
}
MORE_OPPOSITES = {
    "day": "night", "push": "pull", "buy": "sell", "thick": "thin", "wide": "narrow", "clean": "dirty",
    "true": "false", "cheap": "expensive", "deep": "shallow", "begin": "end", "north": "south", "east": "west",
    "asleep": "awake", "remember": "forget", "increase": "decrease", "safe": "dangerous", "near": "far",
    "smooth": "rough", "up": "down", "entrance": "exit",
}
MORE_WORDS = ["container", "pipeline", "optimizer", "embedding", "checkpoint", "namespace", "scheduler",
              "attention", "transformer", "registry", "quantize", "parquet", "notebook", "terminal", "database",
              "protocol", "library", "operator"]
# (kind, generator): the quickstart's generators, over new tables where the quickstart's are used up.
QUESTIONS: list[tuple[str, Callable[[random.Random], tuple[str, str, str]]]] = [
    ("arithmetic", arithmetic), ("capital", partial(capital, table=MORE_CAPITALS)),
    ("opposite", partial(opposite, table=MORE_OPPOSITES)), ("letters", partial(letters, words=MORE_WORDS)),
    ("minutes", partial(minutes, hours=(13, 24))), ("larger", larger),
]
PREAMBLES = ["Sure! Let me think about this one for a moment.", "Great question, here is what I know.",
             "Okay, this is easy if we go step by step.", "Hmm, let me see. I think I know this one."]
REJECTED_KINDS = ["plain", "lowercase", "no_labels", "swapped", "wrong", "preamble", "no_because", "one_line"]


def wrong_answer(kind: str, answer: str, why: str, rng: random.Random) -> tuple[str, str]:
    """A wrong answer to the question and the reason sentence that goes with it."""
    if kind == "larger":  # why: "<hi> is greater than <lo>."
        lo = why.removesuffix(".").split(" is greater than ")[1]
        return lo, f"{lo} is greater than {answer}."
    if kind == "capital":
        other = rng.choice(sorted((set(CAPITALS.values()) | set(MORE_CAPITALS.values())) - {answer}))
        return other, why.replace(answer, other, 1)
    if kind == "opposite":
        other = rng.choice(sorted((set(OPPOSITES.values()) | set(MORE_OPPOSITES.values())) - {answer}))
        return other, why.replace(f"'{answer}'", f"'{other}'", 1)
    wrong = str(int(answer) + rng.choice([1, 2, 10] if int(answer) <= 10 else [-10, -2, -1, 1, 2, 10]))
    head, _, tail = why.rpartition(answer)  # the result is the sentence's last number
    return wrong, head + wrong + tail


def rejected(kind: str, question_kind: str, answer: str, why: str, rng: random.Random) -> str:
    """The sloppy answer of `kind` (REJECTED_KINDS)."""
    if kind == "wrong":
        w, w_why = wrong_answer(question_kind, answer, why, rng)
        return f"ANSWER: {w}\nBECAUSE: {w_why}"
    return {
        "plain": why,  # the right answer, no format
        "lowercase": f"answer: {answer}\nbecause: {why}",
        "no_labels": f"{answer}\n{why}",
        "swapped": f"BECAUSE: {why}\nANSWER: {answer}",
        "preamble": f"{rng.choice(PREAMBLES)}\nANSWER: {answer}\nBECAUSE: {why}",
        "no_because": f"ANSWER: {answer}",
        "one_line": f"ANSWER: {answer} BECAUSE: {why}",
    }[kind]


def pairs(n: int, rng: random.Random, exclude: set[str]) -> tuple[list[dict], Counter[str]]:
    """`n` pairs over new questions (added to `exclude`), the rejected kinds in turn; and the kinds' counts."""
    out: list[dict] = []
    counts: Counter[str] = Counter()
    while len(out) < n:
        question_kind, generate = rng.choice(QUESTIONS)
        question, answer, why = generate(rng)
        if question in exclude:
            continue
        exclude.add(question)
        kind = REJECTED_KINDS[len(out) % len(REJECTED_KINDS)]
        counts[kind] += 1
        out.append({
            "prompt": [{"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": f"ANSWER: {answer}\nBECAUSE: {why}"}],
            "rejected": [{"role": "assistant", "content": rejected(kind, question_kind, answer, why, rng)}],
        })
    return out, counts


def quickstart_questions() -> set[str]:
    """Every question of the quickstart's data (train and eval): none is asked again here."""
    seen = set()
    for name in ("quickstart-train.jsonl", "quickstart-eval.jsonl"):
        with open(HERE / name, encoding="utf-8") as f:
            seen |= {json.loads(line)["messages"][0]["content"] for line in f if line.strip()}
    return seen


def build() -> dict[str, tuple[list[dict], Counter[str]]]:
    """File name -> (its pairs, the rejected kinds' counts)."""
    rng = random.Random(20261122)
    seen = quickstart_questions()
    held_out = pairs(EVAL_PAIRS, rng, seen)  # drawn first so that eval questions never appear in train
    train = pairs(TRAIN_PAIRS, rng, seen)
    return {"dpo-train.jsonl": train, "dpo-eval.jsonl": held_out}


def main() -> None:
    for name, (data, counts) in build().items():
        with open(HERE / name, "w", encoding="utf-8") as f:
            for row in data:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {len(data)} pairs to {HERE / name}; rejected kinds: {dict(counts)}")


if __name__ == "__main__":
    main()
