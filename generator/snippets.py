"""``make snippets``: each blog post as standalone Markdown, ready to paste elsewhere.

Snippet includes (``--8<-- "file.py:section"``) and generated markers are expanded,
executed blocks are run again in their sessions, and what they printed is inlined under
the code: text as a fenced block, SVG pictures as image files beside the exported post.
Nothing in the export refers back to this site.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import shutil
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

from generator.errors import UsageError
from generator.markdown import Fence, edit_prose, expand_generated, replace_fences

ROOT = Path(__file__).resolve().parent.parent
POSTS = ROOT / "docs" / "blog" / "posts"
OUT = ROOT / "build" / "snippets"

_INCLUDE = re.compile(r'^(?P<indent> *)--8<-- "(?P<target>[^"]+)"\s*$', re.M)
_IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)")
_LINK = re.compile(r"(?<!!)\[(?P<text>[^\]]+)\]\((?P<href>[^)\s]+)\)")
DOCS = ROOT / "docs"
_FRONT_MATTER = re.compile(r"\A---\n(?P<yaml>.*?)\n---\n", re.S)


def include(target: str) -> str:
    """The text a ``--8<--`` line stands for: a whole file, or a named section of it."""
    path_text, _, section = target.partition(":")
    path = ROOT / path_text
    if not path.is_file():
        raise UsageError(f"snippet include {target!r}: no such file")
    text = path.read_text()
    if not section:
        return text
    match = re.search(
        rf"^[^\n]*--8<-- \[start:{re.escape(section)}\][^\n]*\n(.*?)^[^\n]*--8<-- \[end:{re.escape(section)}\]",
        text,
        re.M | re.S,
    )
    if match is None:
        raise UsageError(f"snippet include {target!r}: no section {section!r} in {path_text}")
    return textwrap.dedent(match[1])


def expand_includes(markdown: str) -> str:
    return _INCLUDE.sub(lambda m: textwrap.indent(include(m["target"]).rstrip("\n"), m["indent"]), markdown)


def _options(info: str) -> tuple[str, dict[str, str]]:
    words = shlex.split(info.strip())
    language = words[0] if words else ""
    options = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    return language, options


def site_path(post: Path, href: str) -> str:
    """Where a post's relative link lands on the site: ``proposals/kv_cache/#pitfalls``."""
    target, _, fragment = href.partition("#")
    docs_rel = Path(os.path.relpath((post.parent / target).resolve(), DOCS.resolve())).as_posix()
    if docs_rel.endswith(("README.md", "index.md")):
        docs_rel = docs_rel.rsplit("/", 1)[0] + "/" if "/" in docs_rel else ""
    elif docs_rel.endswith(".md"):
        docs_rel = docs_rel.removesuffix(".md") + "/"
    return docs_rel + (f"#{fragment}" if fragment else "")


class Exporter:
    """Runs one post's executed blocks in their sessions and writes the export.

    Relative links become absolute when ``site_url`` is known; otherwise the link text
    stays, followed by the page's path on the project site.
    """

    def __init__(self, post: Path, out_dir: Path, site_url: str | None = None) -> None:
        self.post = post
        self.out_dir = out_dir
        self.site_url = site_url.rstrip("/") + "/" if site_url else None
        self.sessions: dict[str, dict] = {}
        self.figures = 0

    def _run(self, code: str, session: str, line: int) -> str:
        scope = self.sessions.setdefault(session, {"__name__": f"snippet_{session}"})
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            exec(compile(code, f"{self.post.name}:{line}", "exec"), scope)  # noqa: S102 - our own posts
        return buffer.getvalue()

    def _figure(self, svg: str) -> str:
        self.figures += 1
        name = f"figure-{self.figures}.svg"
        (self.out_dir / name).write_text(svg)
        return f"![Figure {self.figures}]({name})"

    def _block(self, fence: Fence) -> str:
        language, options = _options(fence.info)
        if options.get("exec") != "on":
            return fence.text
        code, line = fence.body, fence.start + 1
        output = self._run(code, options.get("session", f"block{line}"), line).rstrip("\n")
        shown = f"```{language}\n{code.rstrip()}\n```\n\n" if options.get("source") else ""
        if options.get("html") == "on" and output.lstrip().startswith("<svg"):
            return shown + self._figure(output.strip())
        if options.get("result"):
            return shown + f"```{options['result']}\n{output}\n```"
        return shown + output

    def _copy_image(self, match: re.Match) -> str:
        src = match["src"]
        if "://" in src or src.startswith(("figure-", "#")):
            return match[0]
        source = (self.post.parent / src).resolve()
        if not source.is_file():  # a site path outside docs/ (proposal plots, zoo files)
            source = ROOT / Path(os.path.relpath(source, ROOT / "docs"))
        if not source.is_file():
            raise UsageError(f"{self.post.name}: image {src!r} not found")
        # Named by their place in the repository, so two plots called decode.svg stay apart.
        name = source.relative_to(ROOT).as_posix().replace("/", "-") if ROOT in source.parents else source.name
        shutil.copy2(source, self.out_dir / name)
        return f"![{match['alt']}]({name})"

    def _absolute_link(self, match: re.Match) -> str:
        href = match["href"]
        if "://" in href or href.startswith(("#", "mailto:")):
            return match[0]
        path = site_path(self.post, href)
        if self.site_url:
            return f"[{match['text']}]({self.site_url}{path})"
        return f"{match['text']} (`{path or '/'}` on the project site)"

    def export(self) -> Path:
        text = self.post.read_text()
        front = _FRONT_MATTER.match(text)
        body = text[front.end() :] if front else text
        body = expand_includes(body).replace("<!-- more -->\n", "")
        body = edit_prose(body, expand_generated)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        body = replace_fences(body, self._block)
        body = edit_prose(body, lambda prose: _LINK.sub(self._absolute_link, _IMAGE.sub(self._copy_image, prose)))
        path = self.out_dir / "post.md"
        path.write_text(body.lstrip())
        return path


def check_site_url(site_url: str) -> str:
    """An absolute http(s) address; anything else would write broken links."""
    parts = urlsplit(site_url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise UsageError(
            f"--site-url {site_url!r} is not an absolute http(s) address; valid: e.g. https://example.org/genai/"
        )
    return site_url


def export_all(posts: Path = POSTS, out: Path = OUT, site_url: str | None = None) -> list[Path]:
    """Export every post to ``build/snippets/<post-stem>/post.md`` (plus its pictures)."""
    if out.exists():
        shutil.rmtree(out)
    if site_url is not None:
        check_site_url(site_url)
    return [Exporter(post, out / post.stem, site_url).export() for post in sorted(posts.glob("*.md"))]
