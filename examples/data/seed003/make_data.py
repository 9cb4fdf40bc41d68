"""Writes seed 003's own instruction data: a 5th-grade math tutor's questions and worked answers.

    {"instruction": "What is 3/4 + 1/2?", "output": "3/4 + 1/2 = 3/4 + 2/4 = 5/4 = 1 1/4"}

This is the file a user "skipping Tab 3" brings (`sft_data.jsonl`, instruction/output); the
other half of the workflow makes the same kind of rows from `docs/` with `launch data chunk` and
`launch data generate` (docs/seeds/seed003-math-tutor.md). Answers are computed, not typed, so
they are right. Run from the repo root: python examples/data/seed003/make_data.py
"""

from __future__ import annotations

import json
import random
from fractions import Fraction
from math import gcd
from pathlib import Path

HERE = Path(__file__).parent


def mixed(f: Fraction) -> str:
    whole, rest = divmod(f.numerator, f.denominator)
    if whole and rest:
        return f"{whole} {rest}/{f.denominator}"
    return str(whole) if not rest else f"{rest}/{f.denominator}"


def add_fractions(rng: random.Random) -> dict[str, str]:
    (n1, d1), (n2, d2) = ((rng.randint(1, d - 1), d) for d in (rng.choice([3, 4, 5, 6]), rng.choice([2, 4, 8])))
    common = d1 * d2 // gcd(d1, d2)
    total = Fraction(n1, d1) + Fraction(n2, d2)
    raw = f"{n1 * common // d1 + n2 * common // d2}/{common}"
    simplest = "" if mixed(total) == raw else f" = {mixed(total)}"
    return {"instruction": f"What is {n1}/{d1} + {n2}/{d2}?",
            "output": f"Over the common denominator {common}: {n1 * common // d1}/{common} + "
                      f"{n2 * common // d2}/{common} = {raw}{simplest}."}


def multiply(rng: random.Random) -> dict[str, str]:
    x, y = rng.randint(11, 49), rng.randint(2, 9)
    return {"instruction": f"What is {x} × {y}?",
            "output": f"{x} × {y} = {x // 10 * 10} × {y} + {x % 10} × {y} = {x // 10 * 10 * y} + {x % 10 * y} "
                      f"= {x * y}."}


def round_tenth(rng: random.Random) -> dict[str, str]:
    n = rng.randint(100, 999) / 100
    digit = int(round(n * 100)) % 10
    return {"instruction": f"Round {n:.2f} to the nearest tenth.",
            "output": f"The hundredths digit is {digit}, which is {'5 or more, so round up' if digit >= 5 else 'less than 5, so round down'}: "
                      f"{n:.2f} ≈ {round(n + 1e-9, 1):.1f}."}


def volume(rng: random.Random) -> dict[str, str]:
    length, width, height = rng.randint(2, 9), rng.randint(2, 9), rng.randint(2, 9)
    return {"instruction": f"A box is {length} cm long, {width} cm wide and {height} cm high. What is its volume?",
            "output": f"Volume = length × width × height = {length} × {width} × {height} = "
                      f"{length * width * height} cubic centimetres."}


def simplify(rng: random.Random) -> dict[str, str]:
    k, f = rng.randint(2, 6), Fraction(rng.randint(1, 7), rng.randint(8, 12))
    n, d = f.numerator * k, f.denominator * k
    g = gcd(n, d)
    return {"instruction": f"Simplify {n}/{d}.",
            "output": f"The greatest common factor of {n} and {d} is {g}: {n}/{d} = {n // g}/{d // g}."}


MAKERS = (add_fractions, multiply, round_tenth, volume, simplify)


def rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    out: list[dict[str, str]] = []
    seen: set[str] = set()
    while len(out) < n:
        row = rng.choice(MAKERS)(rng)
        if row["instruction"] not in seen:
            seen.add(row["instruction"])
            out.append(row)
    return out


def main() -> None:
    train, held_out = rows(56, seed=3), rows(200, seed=4)
    known = {r["instruction"] for r in train}
    evaluation = [r for r in held_out if r["instruction"] not in known][:8]
    for name, data in (("sft_data.jsonl", train), ("eval.jsonl", evaluation)):
        (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data), encoding="utf-8")
        print(f"wrote {len(data)} rows to {HERE / name}")


if __name__ == "__main__":
    main()
