"""The page index: titles to pages, and which pages link to which."""

from tinywiki.parser import Page


class PageStore:
    def __init__(self) -> None:
        self.pages: dict[str, Page] = {}

    def add(self, page: Page) -> None:
        self.pages[page.title] = page

    def backlinks(self, title: str) -> list[str]:
        return sorted(t for t, p in self.pages.items() if title in p.links)


def build_store(pages: list[Page]) -> PageStore:
    store = PageStore()
    for page in pages:
        store.add(page)
    return store
