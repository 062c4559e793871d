"""Page markup the site applies to every page, so that authors write plain Markdown.

- issue and PR citations (``onnx#7114``, ``microsoft/onnxruntime#27389``, a bare ``#8193``
  after a repository was named) become links to GitHub;
- every picture links to its full-size file;
- pictures printed inline (Graphviz, matplotlib) are shown at their natural size in a scroll box, the
  large ones folded, each with a link to the SVG file (written beside the site by the hook).

Code (fenced and indented blocks, as :mod:`generator.markdown` parses them; inline code),
existing links and raw HTML are left alone.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable

from generator.markdown import edit_prose

# Short names that a citation may use instead of owner/repo (`onnx#7114`, `ORT #29912`).
REPO_ALIASES = {
    "onnx": "onnx/onnx",
    "ort": "microsoft/onnxruntime",
    "onnxruntime": "microsoft/onnxruntime",
    "onnxruntime-genai": "microsoft/onnxruntime-genai",
    "openvino": "openvinotoolkit/openvino",
    "openvino.genai": "openvinotoolkit/openvino.genai",
    "transformers": "huggingface/transformers",
    "vllm": "vllm-project/vllm",
    "flashinfer": "flashinfer-ai/flashinfer",
}

# Text that must not be touched, besides code blocks (generator.markdown finds those): inline
# code, Markdown links and images, autolinks, raw HTML tags and bare URLs.
_PROTECTED = re.compile(
    r"(?P<code>(?P<bt>`+).+?(?P=bt))"
    r"|(?P<link>!?\[(?:[^\[\]]|\[[^\]]*\])*\]\([^)\n]*\)(?:\{[^}\n]*\})?)"
    r"|(?P<html><[a-zA-Z/!][^>\n]*>)"
    r"|(?P<url>https?://\S+)",
    re.M | re.S,
)
_OWNER_REPO = r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*"
_ALIAS = "|".join(re.escape(a) for a in sorted(REPO_ALIASES, key=len, reverse=True))
# Owners whose owner/repo mention, without a number, sets the repository of later bare
# numbers (a path such as key/value must not).
CONTEXT_OWNERS = {"onnx", "microsoft", "openvinotoolkit", "huggingface", "vllm-project", "flashinfer-ai", "pytorch"}
_MENTION = re.compile(
    rf"(?<![\w/.-])(?P<repo>{_OWNER_REPO}|(?i:{_ALIAS}))"
    r"(?P<cite>(?:\s+(?:PR|issue|RFC))?\s?#(?P<num>\d{1,6})\b)?(?![\w/-])"
    r"|(?<![\w#&/.-])#(?P<bare>\d{3,6})\b"
)
_IMAGE = re.compile(r"(?<!\[)!\[(?P<alt>[^\]\n]*)\]\((?P<src>[^)\s]+)\)(?P<attrs>\{[^}\n]*\})?")


def _map_text(markdown: str, transform: Callable[[str], str]) -> str:
    """Apply ``transform`` to the unprotected stretches of ``markdown``'s prose."""

    def prose(text: str) -> str:
        out, last = [], 0
        for match in _PROTECTED.finditer(text):
            out += [transform(text[last : match.start()]), match[0]]
            last = match.end()
        out.append(transform(text[last:]))
        return "".join(out)

    return edit_prose(markdown, prose)


def link_citations(markdown: str, warn: Callable[[str], None] = lambda message: None) -> str:
    """Turn issue/PR citations into GitHub links. A bare ``#NNNN`` cites the repository
    most recently named before it on the page (``RFC #NNNN``: onnx/onnx); with none named, ``warn`` is called and the
    text is left as is (the browser test then reports it)."""
    current: list[str | None] = [None]

    def cite(repo: str, number: str, text: str) -> str:
        return f"[{text}](https://github.com/{repo}/issues/{number})"

    def transform(text: str) -> str:
        def replace(m: re.Match) -> str:
            if m["repo"]:
                repo = REPO_ALIASES.get(m["repo"].lower(), m["repo"])
                if m["num"]:
                    current[0] = repo
                    return cite(repo, m["num"], m[0])
                if repo.split("/")[0] in CONTEXT_OWNERS and m["repo"] not in REPO_ALIASES:
                    current[0] = repo
                return m[0]
            if m.string[: m.start()].endswith("RFC "):  # the ONNX RFCs are onnx/onnx PRs
                return cite("onnx/onnx", m["bare"], m[0])
            if current[0] is None:
                warn(f"citation {m[0]!r} names no repository; write it as owner/repo{m[0]}")
                return m[0]
            return cite(current[0], m["bare"], m[0])

        return _MENTION.sub(replace, text)

    return _map_text(markdown, transform)


def link_pictures(markdown: str) -> str:
    """Every Markdown picture not already inside a link opens its full-size file."""

    def transform(text: str) -> str:
        return _IMAGE.sub(lambda m: f"[{m[0]}]({m['src']}){{ .picture-link title='Open full size' }}", text)

    # The image syntax itself is protected by _PROTECTED's link group, so match it first.
    def prose(text: str) -> str:
        out, last = [], 0
        for match in _PROTECTED.finditer(text):
            chunk = match[0]
            if match["link"] and chunk.startswith("!["):
                chunk = transform(chunk)
            out += [text[last : match.start()], chunk]
            last = match.end()
        out.append(text[last:])
        return "".join(out)

    return edit_prose(markdown, prose)


# A picture printed inline with its size in points: Graphviz (dot_to_svg) and matplotlib
# output, <svg [xmlns:xlink=...] width="Wpt" height="Hpt" ...>...</svg>.
_GRAPH_SVG = re.compile(
    r'<svg(?: xmlns:xlink="[^"]*")? width="(?P<w>[\d.]+)pt" height="(?P<h>[\d.]+)pt"[^>]*>.*?</svg>', re.S
)
FOLD_HEIGHT_PX = 1400  # taller pictures start folded
FIGURE_DIR = "figures"


def wrap_graphs(html: str, depth: int, figures: dict[str, str]) -> str:
    """Put each inline Graphviz picture in a scroll box at natural size, with a link to
    its SVG file (``figures/<sha>.svg``, ``depth`` folders above the page); fold tall ones.
    ``figures`` collects the files to write."""

    def wrap(m: re.Match) -> str:
        svg = m[0]
        name = hashlib.sha256(svg.encode()).hexdigest()[:16] + ".svg"
        figures[name] = '<?xml version="1.0" encoding="UTF-8" standalone="no"?>\n' + svg
        width, height = float(m["w"]) * 4 / 3, float(m["h"]) * 4 / 3
        href = "../" * depth + f"{FIGURE_DIR}/{name}"
        link = f'<a class="graph-open" href="{href}">Open the picture full size ({width:.0f} × {height:.0f} px)</a>'
        box = f'<div class="graph-scroll">{svg}</div>'
        if height > FOLD_HEIGHT_PX:
            summary = f"Graph picture, {width:.0f} × {height:.0f} px: click to unfold"
            return f'<details class="graph"><summary>{summary}</summary>{link}{box}</details>'
        return f'<figure class="graph">{box}{link}</figure>'

    return _GRAPH_SVG.sub(wrap, html)


_CELL = re.compile(r"(<td[^>]*>)(.*?)(</td>)", re.S)
_TAG = re.compile(r"(<[^>]+>)")
_NUMBER = re.compile(r"\(?[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)\)?")


def keep_numbers_whole(html: str) -> str:
    """In table cells, a number in scientific notation (``1.9e-06``) never wraps at its
    ``-``: a narrow column would show ``1.9e-`` over ``06``."""

    def cell(m: re.Match) -> str:
        parts = _TAG.split(m[2])
        text = "".join(
            part if part.startswith("<") else _NUMBER.sub(lambda n: f'<span class="nowrap">{n[0]}</span>', part)
            for part in parts
        )
        return m[1] + text + m[3]

    return _CELL.sub(cell, html)
