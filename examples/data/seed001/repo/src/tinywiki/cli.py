"""`tinywiki build CONFIG`: crawl, parse, index and render."""

import sys
from pathlib import Path

from tinywiki.config import load_config
from tinywiki.crawler import find_notes
from tinywiki.parser import parse_note
from tinywiki.renderer import write_site
from tinywiki.store import build_store


def main(argv: list[str]) -> int:
    config = load_config(Path(argv[1]))
    pages = [parse_note(p.read_text()) for p in find_notes(config)]
    count = write_site(config, build_store(pages))
    print(f"wrote {count} pages to {config.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
