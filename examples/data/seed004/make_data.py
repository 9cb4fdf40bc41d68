"""Writes seed 004's own rows: Ghost Architect, a product described in words -> its SQL schema.

    {"messages": [{"role": "user", "content": "Design the database for ..."},
                  {"role": "assistant", "content": "CREATE TABLE ...;"}]}

The user had 30 starter examples (`data/dataset.json`); these are 30 in the task the model is for
(text -> SQL schema design), as chat rows (`format: messages`). No system message: Gemma 3's chat
template folds one into the first user turn, the stand-in's (Gemma 2's, the same turn format)
refuses it. Schemas are assembled from entity definitions, so every foreign key names a table
that exists. Deterministic; run from the repo root: python examples/data/seed004/make_data.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).parent

# entity -> columns (besides `id`); `@other` is a foreign key to that entity's table
ENTITIES = {
    "user": ["email TEXT NOT NULL UNIQUE", "name TEXT NOT NULL", "created_at TIMESTAMP NOT NULL"],
    "project": ["@user", "title TEXT NOT NULL", "archived BOOLEAN NOT NULL DEFAULT FALSE"],
    "task": ["@project", "title TEXT NOT NULL", "due_date DATE", "done BOOLEAN NOT NULL DEFAULT FALSE"],
    "product": ["name TEXT NOT NULL", "price_cents INTEGER NOT NULL CHECK (price_cents >= 0)"],
    "order": ["@user", "placed_at TIMESTAMP NOT NULL", "status TEXT NOT NULL"],
    "order_item": ["@order", "@product", "quantity INTEGER NOT NULL CHECK (quantity > 0)"],
    "post": ["@user", "body TEXT NOT NULL", "published_at TIMESTAMP"],
    "comment": ["@post", "@user", "body TEXT NOT NULL"],
    "invoice": ["@user", "amount_cents INTEGER NOT NULL", "paid BOOLEAN NOT NULL DEFAULT FALSE"],
    "subscription": ["@user", "plan TEXT NOT NULL", "renews_on DATE NOT NULL"],
    "team": ["name TEXT NOT NULL UNIQUE"],
    "membership": ["@team", "@user", "role TEXT NOT NULL"],
}

APPS = [  # (what the user describes, the entities its schema needs, in dependency order)
    ("a to-do app where people group tasks into projects", ["user", "project", "task"]),
    ("an online shop with orders of several products", ["user", "product", "order", "order_item"]),
    ("a blog where readers comment on posts", ["user", "post", "comment"]),
    ("a SaaS billing page with plans and invoices", ["user", "subscription", "invoice"]),
    ("a workspace where users join teams with a role", ["user", "team", "membership"]),
    ("a team project tracker", ["user", "team", "membership", "project", "task"]),
]

ASKS = [
    "Design the database schema for {app}.",
    "I am building {app}. Write the SQL tables.",
    "Give me a PostgreSQL schema for {app}.",
    "What tables does {app} need? Answer with CREATE TABLE statements.",
    "Sketch the data model of {app} as SQL.",
]


RESERVED = {"user", "order"}  # PostgreSQL keywords: these table names are quoted


def quoted(entity: str) -> str:
    return f'"{entity}"' if entity in RESERVED else entity


def table(entity: str) -> str:
    name = quoted(entity)
    cols = ["id BIGSERIAL PRIMARY KEY"]
    for col in ENTITIES[entity]:
        if col.startswith("@"):
            ref = col[1:]
            cols.append(f"{ref}_id BIGINT NOT NULL REFERENCES {quoted(ref)}(id) ON DELETE CASCADE")
        else:
            cols.append(col)
    return f"CREATE TABLE {name} (\n  " + ",\n  ".join(cols) + "\n);"


def rows() -> list[dict[str, object]]:
    out = [{"messages": [{"role": "user", "content": ask.format(app=app)},
                         {"role": "assistant", "content": "\n".join(table(e) for e in entities)}]}
           for app, entities in APPS for ask in ASKS]
    random.Random(4).shuffle(out)
    return out


def main() -> None:
    every = rows()  # 6 apps x 5 phrasings = 30, as the user's starter set: 26 to train on, 4 held out
    for name, data in (("train.jsonl", every[:26]), ("eval.jsonl", every[26:])):
        (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data), encoding="utf-8")
        print(f"wrote {len(data)} rows to {HERE / name}")


if __name__ == "__main__":
    main()
