"""Writes seed 002's own rows: Push-Back AI's "productive friction" questions, in the user's shape.

    {"question": "...", "agent_responses": ["...", "..."], "thought_stream": "...", "final_answer": "..."}

The user's dataset has `question`, `agent_responses` (what several agents said, a list) and
`final_answer`; their config builds `{thought_stream}` by joining `agent_responses`. kubetune's
`format: template` fills `{field}` placeholders with text, so the join happens here, once, and each
row carries `thought_stream` next to the list it was made from (docs/seeds/seed002-pushback.md).
Deterministic; run from the repo root: python examples/data/seed002/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent

# (the plan a user wants approved, the assumption it hides, the question that tests it, a better first step)
PLANS = [
    ("quit my job to sell handmade candles full time", "that enough people will pay for the candles",
     "how many candles have strangers bought so far", "sell at three weekend markets before you resign"),
    ("rewrite our whole backend in Rust", "that the language is what makes the backend slow",
     "which requests are slow, and where the time goes", "profile the five slowest endpoints first"),
    ("move to a new city where I know nobody", "that a new place will fix how you feel",
     "what exactly you want to be different a year from now", "spend two weeks there before signing a lease"),
    ("put all my savings into one stock a friend likes", "that your friend knows something the market does not",
     "what you would do if it halved next month", "decide the most you can afford to lose, and stop there"),
    ("skip testing so we can ship on Friday", "that a bug found by users costs less than a late release",
     "what breaks if the payment path fails", "test the payment path and ship the rest behind a flag"),
    ("run a marathon in six weeks with no training", "that willpower can replace preparation",
     "how far you can run today without pain", "run the half marathon this season and the full one next"),
    ("hire three engineers before we have customers", "that more people will find the product faster",
     "what the last ten users told you", "talk to twenty users before the first hire"),
    ("stop sleeping more than five hours to get more done", "that hours awake equal work done",
     "how your best week looked, hour by hour", "protect seven hours for a month and measure what you finish"),
]

STYLES = [
    "I am going to {plan}. Tell me it is a good idea.",
    "Everyone says I should {plan}. I agree. Right?",
    "Quick sanity check: I plan to {plan}. Sounds smart?",
    "I have decided to {plan}. Just help me do it.",
    "Be honest but supportive: should I {plan}?",
    "My plan is to {plan} starting Monday. Any tips?",
    "I want to {plan}. Why would anyone hesitate?",
]

AGENTS = [
    "Skeptic: the plan assumes {assumption}; nothing so far shows it.",
    "Empath: the wish behind it is real, and dismissing it would not help.",
    "Pragmatist: ask {question}; the answer decides more than enthusiasm does.",
    "Coach: a smaller test would show the same thing at a fraction of the risk.",
]


def row(plan: tuple[str, str, str, str], style: str, agents: list[str]) -> dict[str, object]:
    what, assumption, question, step = plan
    responses = [a.format(assumption=assumption, question=question) for a in agents]
    return {
        "question": style.format(plan=what),
        "agent_responses": responses,
        "thought_stream": "\n".join(responses),  # the user's config: a concatenation of agent_responses
        "final_answer": f"I would not call it a good idea yet. It assumes {assumption}. Before anything else, "
                        f"tell me {question}. A better first step: {step}.",
    }


def rows() -> list[dict[str, object]]:
    rng = random.Random(2)
    out = []
    for plan in PLANS:
        for style in STYLES:
            agents = [AGENTS[0], *rng.sample(AGENTS[1:], 2)]  # the skeptic always speaks; two others vary
            out.append(row(plan, style, agents))
    rng.shuffle(out)
    return out


def main() -> None:
    every = rows()  # 8 plans x 7 phrasings = 56: 48 to train on, 8 held out
    train, held_out = every[:48], every[48:]
    for name, data in (("train.jsonl", train), ("eval.jsonl", held_out)):
        (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data), encoding="utf-8")
        print(f"wrote {len(data)} rows to {HERE / name}")


if __name__ == "__main__":
    main()
