"""Every link and resource in the built site resolves, anchors included, without a network.

htmlproofer checks links MkDocs knows about; this also catches HTML that executed
blocks print (for example a `.md` link MkDocs never rewrote).
"""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urldefrag, urlparse

SKIPPED_SCHEMES = ("mailto:", "javascript:", "data:", "blob:")
RESOURCE_ATTRS = {("img", "src"), ("script", "src"), ("link", "href"), ("source", "src")}


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, url)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if value is None:
                continue
            if name in ("id", "name"):
                self.ids.add(value)
            elif (tag, name) in RESOURCE_ATTRS or (tag == "a" and name == "href"):
                self.links.append((tag, name, value))


def _parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(errors="replace"))
    return page


def _target(site: Path, page: Path, url: str) -> Path:
    path = unquote(urlparse(url).path)
    base = site if path.startswith("/") else page.parent
    target = (base / path.lstrip("/")).resolve() if path else page
    return target / "index.html" if target.is_dir() else target


def test_site_links_and_resources_resolve(site_dir: Path) -> None:
    pages = {p: _parse(p) for p in site_dir.rglob("*.html")}
    problems = []
    for page, parsed in pages.items():
        where = page.relative_to(site_dir)
        for tag, attr, url in parsed.links:
            if url.startswith(SKIPPED_SCHEMES) or url == "#":
                continue
            if urlparse(url).scheme in ("http", "https") or url.startswith("//"):
                if (tag, attr) in RESOURCE_ATTRS:
                    problems.append(f"{where}: <{tag} {attr}> loads from the network: {url}")
                continue
            address, fragment = urldefrag(url)
            target = _target(site_dir, page, address)
            if not target.exists():
                problems.append(f"{where}: <{tag} {attr}={url!r}> points to a missing file")
            elif fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if unquote(fragment) not in ids:
                    problems.append(f"{where}: <{tag} {attr}={url!r}> points to a missing anchor")
    assert not problems, "\n".join(problems[:40])


def test_site_stylesheets_import_nothing_remote(site_dir: Path) -> None:
    remote = [
        str(css.relative_to(site_dir))
        for css in site_dir.rglob("*.css")
        if "@import" in (text := css.read_text(errors="replace")) and "http" in text.split("@import", 1)[1][:20]
    ]
    assert not remote


def test_no_list_item_rendered_as_text(site_dir: Path) -> None:
    """A Markdown list needs a blank line before it; without one its items show as '- ...'."""
    import re

    stray = []
    for page in site_dir.rglob("*.html"):
        text = re.sub(r"<(pre|svg|script|code)\b.*?</\1>", "", page.read_text(errors="replace"), flags=re.S)
        stray += [f"{page.relative_to(site_dir)}: {m[0].strip()[:60]}" for m in re.finditer(r"^\s*- \S.*$", text, re.M)]
    assert not stray, "\n".join(stray)


class _NavLinks(HTMLParser):
    """The left navigation's links: (href, text) of every ``a.md-nav__link``."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._inside = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "a" and "md-nav__link" in (found.get("class") or "").split():
            self.links.append((found.get("href") or "", ""))
            self._inside = True

    def handle_endtag(self, tag: str) -> None:
        self._inside = self._inside and tag != "a"

    def handle_data(self, data: str) -> None:
        if self._inside and data.strip():
            href, text = self.links[-1]
            self.links[-1] = (href, f"{text} {data.strip()}".strip())


def test_every_proposal_has_its_own_nav_entry(site_dir: Path) -> None:
    """Each proposal page is an item of the Proposals section, not the section's own link
    (Material's navigation.indexes makes the first README of a section its index page)."""
    nav = _NavLinks()
    nav.feed((site_dir / "index.html").read_text())
    titles = dict(nav.links)
    topics = sorted(p.name for p in (site_dir.parent / "proposals").iterdir() if (p / "README.md").is_file())
    assert titles.get("proposals/") == "Proposals"
    wrong = {t: titles.get(f"proposals/{t}/") for t in topics if titles.get(f"proposals/{t}/") in (None, "Proposals")}
    assert not wrong, f"proposal pages without their own nav entry: {wrong}"
