"""Build a seed workflow's tiny stand-in base model: random weights, the family's real tokenizer and chat template.

    .venv/bin/python scripts/tiny_model.py phi3 /tmp/tiny-phi3
    launch submit --local examples/seed003-math-tutor.yaml --set base_model=/tmp/tiny-phi3 ...

The same models the tests build (tests/models.py); the `--set` list of each seed is in its docs page
(docs/seeds/) and in tests/seeds.py. Needs `make setup` (llama.cpp's vocabularies and templates).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.models import TOKENIZER, copy_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("arch", choices=sorted(TOKENIZER), help="the architecture of the seed's real base model")
    parser.add_argument("out", type=Path, help="folder to write the model to (must not exist)")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists: give a new folder")
    copy_model(args.arch, args.out)
    print(f"wrote a tiny random {args.arch} model with its real tokenizer to {args.out}")


if __name__ == "__main__":
    main()
