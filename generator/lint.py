"""Proposal-page lint: every proposal document has the sections reviewers look for."""

from __future__ import annotations

import re
from pathlib import Path

from generator.markdown import headings as markdown_headings
from generator.markdown import paragraphs, sections

ROOT = Path(__file__).resolve().parent.parent

# Level-2 headings every proposals/<topic>/README.md has, in this order.
REQUIRED_SECTIONS: tuple[tuple[str, ...], ...] = (
    ("Summary",),
    ("Motivation",),
    ("Semantics", "Schema"),
    ("Examples",),
    ("Backend support",),
    ("Alternatives",),
    ("Open questions",),
)


def headings(markdown: str) -> list[str]:
    """The ``## `` headings of a page, outside fenced code blocks (markdown-it-py's reading:
    a fence closes only on its own marker, so a ```` ``` ```` line inside a ``~~~~`` block
    does not end it)."""
    return markdown_headings(markdown, 2)


# The paragraph of the Summary that gives the page's answer in one sentence; the home page
# lists it beside the proposal (generator.docs.proposals_table).
CONCLUSION = "**Conclusion:**"


def conclusion(markdown: str) -> str:
    """The text of the Summary's ``**Conclusion:**`` paragraph, on one line ('' if none)."""
    summary = next((body for name, body in sections(markdown) if name == "Summary"), "")
    found = next((p for p in paragraphs(summary) if p.startswith(CONCLUSION)), "")
    return " ".join(found.removeprefix(CONCLUSION).split())


def section_problems(markdown: str) -> list[str]:
    """What is missing or out of order, one line per problem; empty when the page is fine."""
    present = headings(markdown)
    problems, position = [], -1
    if "Summary" in present and not conclusion(markdown):
        problems.append(f"no '{CONCLUSION} ...' paragraph in '## Summary' (the one-line answer the home page lists)")
    for choices in REQUIRED_SECTIONS:
        hits = [present.index(c) for c in choices if c in present]
        label = " or ".join(f"'## {c}'" for c in choices)
        if not hits:
            problems.append(f"missing section {label}")
        elif min(hits) < position:
            problems.append(f"section {label} is out of order")
        else:
            position = min(hits)
    return problems


def proposal_pages(root: Path = ROOT) -> list[Path]:
    return sorted((root / "proposals").glob("*/README.md"))


def mangled_includes(markdown: str) -> list[str]:
    """Snippet-include lines a code formatter has rewritten (``--8 < --"f.py"``): they would
    render as literal text instead of including the code."""
    return [
        line.strip()
        for line in markdown.splitlines()
        if re.match(r'^\s*--8\s*<\s*--\s*"', line) and "--8<-- " not in line
    ]


def markdown_pages(root: Path = ROOT) -> list[Path]:
    """Every Markdown page of the site: docs/ and the proposals."""
    return sorted([*(root / "docs").rglob("*.md"), *(root / "proposals").rglob("*.md")])
