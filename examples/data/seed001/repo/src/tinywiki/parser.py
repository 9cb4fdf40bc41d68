"""Turns one note into a Page: its title, body and [[wiki links]]."""

import re
from dataclasses import dataclass, field

LINK = re.compile(r"\[\[([^\]]+)\]\]")


@dataclass
class Page:
    title: str
    body: str
    links: list[str] = field(default_factory=list)


def parse_note(text: str) -> Page:
    lines = text.splitlines()
    title = lines[0].lstrip("# ").strip() if lines else "Untitled"
    body = "\n".join(lines[1:])
    return Page(title, body, extract_links(body))


def extract_links(body: str) -> list[str]:
    return [m.group(1).strip() for m in LINK.finditer(body)]
