"""The project's one Markdown parser, for the tools that read pages: markdown-it-py.

CommonMark, plus the two things the site's pages use that CommonMark reads otherwise: YAML
front matter (blog posts) and MkDocs admonitions (``!!! note`` and ``??? example`` with an
indented body), both from mdit-py-plugins. The lint (headings), the site markup (what not to
link), the snippet export (executed blocks) and the figure scan (what is prose) all ask it
where the fenced code is, so a fence means the same thing to each of them.
"""

from __future__ import annotations

import functools
import importlib
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass

from markdown_it import MarkdownIt
from markdown_it.token import Token
from mdit_py_plugins.admon import admon_plugin
from mdit_py_plugins.front_matter import front_matter_plugin

CODE_TOKENS = ("fence", "code_block")

# A page asks for generated Markdown with a marker naming a function that returns it:
# <!-- generated: generator.docs:catalogue_markdown -->. Unlike exec-block output, the
# result is ordinary page Markdown, so MkDocs resolves and validates its links.
GENERATED = re.compile(r"<!-- generated: ([\w.]+):(\w+) -->")


def expand_generated(markdown: str) -> str:
    """Replace each generated marker with what its function returns (the site's hook, the
    snippet export and the home page's table all expand them this way)."""
    return GENERATED.sub(lambda match: getattr(importlib.import_module(match[1]), match[2])(), markdown)


@functools.cache
def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark").use(front_matter_plugin).use(admon_plugin)


def tokens(markdown: str) -> list[Token]:
    """The block tokens of a page, in order, nested containers flattened (``level`` says how deep)."""
    return _parser().parse(markdown)


@dataclass(frozen=True)
class Fence:
    """One fenced code block: its lines ``start`` (the opening fence) to ``end`` (exclusive)."""

    start: int
    end: int
    info: str  # what follows the opening backticks: language and options
    body: str  # the code, without the fence's indentation
    text: str  # the block's lines as written, opening and closing fence included


def fences(markdown: str) -> list[Fence]:
    """Every fenced code block, in a list, an admonition or at the top level."""
    lines = markdown.splitlines(keepends=True)
    return [
        Fence(t.map[0], t.map[1], t.info, textwrap.dedent(t.content), "".join(lines[t.map[0] : t.map[1]]))
        for t in tokens(markdown)
        if t.type == "fence" and t.map
    ]


def code_lines(markdown: str) -> set[int]:
    """The 0-based numbers of the lines that are code: fenced or indented blocks."""
    return {n for t in tokens(markdown) if t.type in CODE_TOKENS and t.map for n in range(*t.map)}


def headings(markdown: str, level: int) -> list[str]:
    """The text of the page's top-level ATX headings of ``level`` (``## Summary`` -> "Summary")."""
    found, it = [], iter(tokens(markdown))
    for token in it:
        if token.type == "heading_open" and token.level == 0 and token.markup == "#" * level:
            found.append(next(it).content.strip())
    return found


def sections(markdown: str) -> list[tuple[str, str]]:
    """(heading text, source of what follows up to the next heading of the same or a higher
    level) for every top-level ATX heading."""
    lines = markdown.splitlines(keepends=True)
    heads = []
    it = iter(tokens(markdown))
    for token in it:
        if token.type == "heading_open" and token.level == 0 and token.map and set(token.markup) == {"#"}:
            heads.append((len(token.markup), token.map[0], next(it).content.strip()))
    found = []
    for i, (depth, line, text) in enumerate(heads):
        end = next((other for d, other, _ in heads[i + 1 :] if d <= depth), len(lines))
        found.append((text, "".join(lines[line + 1 : end])))
    return found


def paragraphs(markdown: str) -> list[str]:
    """The source of every top-level paragraph, one string each, line breaks kept."""
    lines = markdown.splitlines(keepends=True)
    return [
        "".join(lines[t.map[0] : t.map[1]]).strip()
        for t in tokens(markdown)
        if t.type == "paragraph_open" and t.level == 0 and t.map
    ]


def link_targets(markdown: str) -> list[str]:
    """The target of every link and picture in the text, in order."""
    return [
        child.attrs.get("href", child.attrs.get("src", ""))
        for token in tokens(markdown)
        if token.type == "inline"
        for child in token.children or ()
        if child.type in ("link_open", "image")
    ]


def split_code(markdown: str) -> list[tuple[bool, str]]:
    """The page cut into alternating stretches, ``(is_code, text)``, that join back to it."""
    lines = markdown.splitlines(keepends=True)
    code = code_lines(markdown)
    chunks: list[tuple[bool, str]] = []
    for number, line in enumerate(lines):
        is_code = number in code
        if chunks and chunks[-1][0] == is_code:
            chunks[-1] = (is_code, chunks[-1][1] + line)
        else:
            chunks.append((is_code, line))
    return chunks


def edit_prose(markdown: str, edit: Callable[[str], str]) -> str:
    """Apply ``edit`` to every stretch that is not code; code stays as it is."""
    return "".join(text if is_code else edit(text) for is_code, text in split_code(markdown))


def replace_fences(markdown: str, replace: Callable[[Fence], str]) -> str:
    """The page with every fenced block replaced by ``replace(fence)`` (its ``text`` to keep it).
    The replacement stands for whole lines, so it ends with a line break as they do."""
    lines = markdown.splitlines(keepends=True)
    out, position = [], 0
    for fence in fences(markdown):
        new = replace(fence)
        if fence.text.endswith("\n") and not new.endswith("\n"):
            new += "\n"
        out += [*lines[position : fence.start], new]
        position = fence.end
    return "".join([*out, *lines[position:]])
