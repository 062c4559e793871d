"""``generator.markdown``: the one parser the page tools share (markdown-it-py)."""

from __future__ import annotations

from generator.markdown import code_lines, edit_prose, fences, headings, paragraphs, replace_fences, sections

PAGE = """---
title: A post
---

# Title

## Summary

Prose with `code` and a list:

- item

    ```python exec="on"
    print(1)
    ```

!!! note "An admonition"

    ~~~~markdown
    ```python
    ## Not a heading
    ```
    ~~~~

    ## Not a top-level heading either

    indented prose

## Next

    indented code
"""


def test_fences_in_lists_and_admonitions_close_only_on_their_own_marker() -> None:
    found = fences(PAGE)
    assert [(f.start, f.end, f.info) for f in found] == [(12, 15, 'python exec="on"'), (18, 23, "markdown")]
    assert found[0].body == "print(1)\n"
    assert found[0].text == '    ```python exec="on"\n    print(1)\n    ```\n'
    assert found[1].body == "```python\n## Not a heading\n```\n"


def test_headings_are_top_level_atx_outside_code_and_front_matter() -> None:
    assert headings(PAGE, 2) == ["Summary", "Next"]
    assert headings(PAGE, 1) == ["Title"]
    assert [name for name, _ in sections(PAGE)] == ["Title", "Summary", "Next"]
    assert dict(sections(PAGE))["Next"] == "\n    indented code\n"


def test_prose_and_code_split_and_join_back() -> None:
    code = code_lines(PAGE)
    assert {13, 20, 30} <= code and not {8, 24, 26} & code
    assert edit_prose(PAGE, lambda text: text) == PAGE
    shouted = edit_prose(PAGE, str.upper)
    assert "PROSE WITH `CODE`" in shouted and "print(1)" in shouted and "## Not a heading" in shouted
    assert "    INDENTED PROSE" in shouted and "    indented code" in shouted


def test_replace_fences_keeps_the_lines_around_them() -> None:
    text = "a\n\n```python\nx = 1\n```\nb\n"
    assert replace_fences(text, lambda fence: f"ran {fence.body.strip()}") == "a\n\nran x = 1\nb\n"
    assert replace_fences(PAGE, lambda fence: fence.text) == PAGE


def test_paragraphs_are_top_level_sources() -> None:
    assert paragraphs("One\nline.\n\n> quoted\n\nTwo.\n") == ["One\nline.", "Two."]
