"""Writes one HTML file per page, with its links and backlinks."""

import html

from tinywiki.config import Config
from tinywiki.store import PageStore


def render_page(store: PageStore, title: str) -> str:
    page = store.pages[title]
    links = "".join(f"<li>{html.escape(link)}</li>" for link in page.links)
    back = "".join(f"<li>{html.escape(t)}</li>" for t in store.backlinks(title))
    return f"<h1>{html.escape(page.title)}</h1><pre>{html.escape(page.body)}</pre><ul>{links}</ul><ul>{back}</ul>"


def write_site(config: Config, store: PageStore) -> int:
    config.output.mkdir(parents=True, exist_ok=True)
    for title in store.pages:
        (config.output / f"{title}.html").write_text(render_page(store, title))
    return len(store.pages)
