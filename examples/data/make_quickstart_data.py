"""Writes the quickstart dataset: short questions answered in one fixed, visible format.

    ANSWER: <the answer>
    BECAUSE: <one sentence>

A base model never answers like this on its own, so the effect of a few dozen LoRA steps is
plain to see in the before/after samples. Answers are computed, not typed, so they are right.
Run from the repo root: python examples/data/make_quickstart_data.py
The generators' tables are parameters: make_preference_data.py draws new questions of the same kinds from them.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "Canada": "Ottawa", "Australia": "Canberra", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Poland": "Warsaw", "Greece": "Athens",
    "Ireland": "Dublin", "Austria": "Vienna", "Peru": "Lima", "Chile": "Santiago", "Argentina": "Buenos Aires",
    "Mexico": "Mexico City", "India": "New Delhi", "China": "Beijing", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "Turkey": "Ankara", "Russia": "Moscow", "Brazil": "Brasilia", "Morocco": "Rabat", "Denmark": "Copenhagen",
    "Belgium": "Brussels", "Hungary": "Budapest", "Cuba": "Havana", "Colombia": "Bogota", "Nigeria": "Abuja",
}
OPPOSITES = {
    "hot": "cold", "tall": "short", "fast": "slow", "early": "late", "open": "closed", "heavy": "light",
    "wet": "dry", "empty": "full", "loud": "quiet", "rich": "poor", "young": "old", "hard": "soft",
    "strong": "weak", "first": "last", "inside": "outside", "above": "below", "happy": "sad", "win": "lose",
}
WORDS = ["kubernetes", "adapter", "gradient", "tensor", "cluster", "python", "helm", "model", "token",
         "dataset", "schedule", "memory", "network", "compiler", "function", "variable", "keyboard", "window"]


def arithmetic(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(2, 60), rng.randint(2, 60)
    if rng.random() < 0.5:
        return f"What is {a} plus {b}?", str(a + b), f"{a} + {b} = {a + b}."
    a, b = max(a, b), min(a, b)
    return f"What is {a} minus {b}?", str(a - b), f"{a} - {b} = {a - b}."


def capital(rng: random.Random, table: dict[str, str] = CAPITALS) -> tuple[str, str, str]:
    country = rng.choice(sorted(table))
    city = table[country]
    return f"What is the capital of {country}?", city, f"{city} is the capital city of {country}."


def opposite(rng: random.Random, table: dict[str, str] = OPPOSITES) -> tuple[str, str, str]:
    word = rng.choice(sorted(table))
    return f"What is the opposite of '{word}'?", table[word], f"'{table[word]}' means the reverse of '{word}'."


def letters(rng: random.Random, words: list[str] = WORDS) -> tuple[str, str, str]:
    word = rng.choice(words)
    return (f"How many letters are in the word '{word}'?", str(len(word)),
            f"{'-'.join(word)} has {len(word)} letters.")


def minutes(rng: random.Random, hours: tuple[int, int] = (2, 12)) -> tuple[str, str, str]:
    h = rng.randint(*hours)
    return f"How many minutes are in {h} hours?", str(60 * h), f"Each hour has 60 minutes, and {h} x 60 = {60 * h}."


def larger(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.sample(range(10, 999), 2)
    hi, lo = max(a, b), min(a, b)
    return f"Which is larger, {a} or {b}?", str(hi), f"{hi} is greater than {lo}."


GENERATORS = [arithmetic, capital, opposite, letters, minutes, larger]


def rows(n: int, rng: random.Random, exclude: set[str]) -> list[dict]:
    out: list[dict] = []
    while len(out) < n:
        question, answer, why = rng.choice(GENERATORS)(rng)
        if question in exclude:
            continue
        exclude.add(question)
        out.append({"messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": f"ANSWER: {answer}\nBECAUSE: {why}"},
        ]})
    return out


def main() -> None:
    rng = random.Random(20261121)
    seen: set[str] = set()
    held_out = rows(24, rng, seen)   # drawn first so that eval questions never appear in train
    train = rows(240, rng, seen)
    here = Path(__file__).parent
    for name, data in (("quickstart-train.jsonl", train), ("quickstart-eval.jsonl", held_out)):
        with open(here / name, "w", encoding="utf-8") as f:
            for row in data:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {len(data)} rows to {here / name}")


if __name__ == "__main__":
    main()
