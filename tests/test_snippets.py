"""`make snippets`: every blog post exports as standalone Markdown with its outputs inlined."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from generator import UsageError
from generator.snippets import POSTS, Exporter, check_site_url, export_all, include


def test_export_all_writes_one_folder_per_post(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What export_all adds to Exporter: a fresh folder per post (each post's export is the test below)."""
    stale = tmp_path / "gone.md"
    stale.parent.mkdir(exist_ok=True)
    stale.write_text("left from an earlier export")
    monkeypatch.setattr(Exporter, "export", lambda self: self.out_dir / "post.md")
    exported = export_all(POSTS, tmp_path)
    assert exported == [tmp_path / p.stem / "post.md" for p in sorted(POSTS.glob("*.md"))] and exported
    assert not stale.exists()


class _Recorded(Exporter):
    """Prints, for each executed block, where it came from instead of running it: the strict
    site build (`make docs`) runs every block of every post in its session, and a block that
    raises fails that build (markdown-exec logs a warning)."""

    def _run(self, code: str, session: str, line: int) -> str:
        return f"ran {self.post.name}:{line} in session {session}\n"


@pytest.mark.parametrize("source", sorted(POSTS.glob("*.md")), ids=lambda p: p.stem)
def test_every_post_exports_standalone(source: Path, tmp_path: Path) -> None:
    post = _Recorded(source, tmp_path / source.stem).export()
    text = post.read_text()
    assert 'exec="on"' not in text and "--8<--" not in text and "<!-- more -->" not in text
    assert not text.startswith("---"), "front matter is dropped"
    executed = source.read_text().count('exec="on"')
    assert text.count(f"ran {source.name}:") == executed >= 1, "every executed block's output is inlined"
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert "/" not in image and (post.parent / image).stat().st_size > 0
    prose = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    links = re.findall(r"(?<!!)\[[^\]]+\]\((?!https?://)[^)]*\)", prose)
    assert not links, f"site-relative links remain: {links}"


def test_a_post_exports_with_what_its_code_prints(tmp_path: Path) -> None:
    """The real path: the blocks run in their sessions and their printed text is inlined."""
    (source,) = [p for p in POSTS.glob("*.md") if "pipeline-wave-2" in p.name]
    text = Exporter(source, tmp_path).export().read_text()
    assert "```text\n" in text and "```python\n" in text and " ran 2026-" not in text


def test_include_reads_a_named_section() -> None:
    text = include("generator/runtimes.py:reference")
    assert text.startswith("class ReferenceRuntime(Runtime):")
    with pytest.raises(UsageError, match="no section 'nope' in generator/runtimes.py"):
        include("generator/runtimes.py:nope")


def test_links_become_absolute_with_a_site_url(tmp_path: Path) -> None:
    # one post, exported as export_all exports each (the test above runs all of them)
    (source,) = [p for p in POSTS.glob("*.md") if "opset24-kv-cache" in p.name]
    post = Exporter(source, tmp_path / source.stem, check_site_url("https://example.org/genai/")).export()
    text = post.read_text()
    assert "](https://example.org/genai/conformance/)" in text
    assert "](https://example.org/genai/proposals/kv_cache/)" in text
    assert "proposals-kv_cache-bench-kv_update.svg" in text


def test_site_path_of_links() -> None:
    from generator.snippets import site_path

    post = POSTS / "a-post.md"
    assert site_path(post, "../../proposals/moe/README.md#benchmark") == "proposals/moe/#benchmark"
    assert site_path(post, "../../conformance.md") == "conformance/"
    assert site_path(post, "../index.md") == "blog/"
