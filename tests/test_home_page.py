"""The home page lists what the project holds: every topic folder under ``proposals/`` with the
conclusion its page gives, and the runtimes of the conformance matrix, all generated."""

from __future__ import annotations

from pathlib import Path

import pytest

from generator.docs import proposals_table, runtimes_sentence
from generator.errors import UsageError
from generator.lint import conclusion, section_problems

ROOT = Path(__file__).resolve().parent.parent
HOME = ROOT / "docs" / "index.md"


def topic_folders(root: Path = ROOT) -> list[str]:
    return sorted(p.name for p in (root / "proposals").iterdir() if p.is_dir() and p.name != "__pycache__")


def test_every_topic_folder_is_on_the_home_page() -> None:
    """The page asks for the generated table, and the table links every folder's page."""
    assert "<!-- generated: generator.docs:proposals_table -->" in HOME.read_text()
    table = proposals_table()
    missing = [topic for topic in topic_folders() if f"](proposals/{topic}/README.md)" not in table]
    assert not missing, f"topic folders missing from the home page: {missing}"


@pytest.mark.parametrize("topic", topic_folders())
def test_each_row_gives_the_conclusion_read_from_the_page(topic: str) -> None:
    answer = conclusion((ROOT / "proposals" / topic / "README.md").read_text())
    row = next(line for line in proposals_table().splitlines() if f"](proposals/{topic}/README.md)" in line)
    assert answer and "](" not in answer  # a relative link would need rewriting; none here
    assert row.endswith(f"| {answer[:1].upper()}{answer[1:]} |")


def _page(folder: Path, title: str, summary: str) -> None:
    folder.mkdir(parents=True)
    (folder / "README.md").write_text(f"# {title}\n\n## Summary\n\n{summary}\n\n## Motivation\n\nWhy.\n")


def test_the_table_is_read_from_the_folders(tmp_path: Path) -> None:
    _page(
        tmp_path / "proposals/alpha",
        "Alpha op",
        "Intro.\n\n**Conclusion:** adopt it, see\n[beta](../beta/README.md#why) and [below](#semantics).",
    )
    _page(tmp_path / "proposals/beta", "Beta", "**Conclusion:** a | b.")
    (tmp_path / "proposals/beta/spec.md").write_text("# Beta op draft\n")
    (tmp_path / "proposals/__pycache__").mkdir()
    assert proposals_table(tmp_path).splitlines()[2:] == [
        "| [Alpha op](proposals/alpha/README.md) | Adopt it, see [beta](proposals/beta/README.md#why) and "
        "[below](proposals/alpha/README.md#semantics). |",
        "| [Beta](proposals/beta/README.md)<br>↳ [Beta op draft](proposals/beta/spec.md) | A \\| b. |",
    ]
    (tmp_path / "proposals/gamma").mkdir()
    with pytest.raises(UsageError, match=r"proposals/gamma/ has no README.md"):
        proposals_table(tmp_path)
    _page(tmp_path / "proposals/delta", "Delta", "No answer yet.")
    (tmp_path / "proposals/gamma/README.md").write_text((tmp_path / "proposals/beta/README.md").read_text())
    with pytest.raises(UsageError, match=r"proposals/delta/README.md: no '\*\*Conclusion:\*\* \.\.\.' paragraph"):
        proposals_table(tmp_path)


def test_the_lint_asks_every_page_for_its_conclusion() -> None:
    text = "## Summary\n\nWhat it adds.\n\n## Motivation\n"
    assert "no '**Conclusion:** ...' paragraph in '## Summary'" in section_problems(text)[0]
    assert (
        conclusion("## Summary\n\n**Conclusion:** yes,\nlayered.\n\n## Other\n\n**Conclusion:** no.\n")
        == "yes, layered."
    )
    assert conclusion("## Motivation\n\n**Conclusion:** not in the Summary.\n") == ""


def test_the_runtime_count_comes_from_the_matrix() -> None:
    assert "<!-- generated: generator.docs:runtimes_sentence -->" in HOME.read_text()
    matrix = {"runtimes": [{"name": n} for n in ("reference", "onnxruntime", "tract")], "skipped": {"tvm": "..."}}
    assert runtimes_sentence(matrix) == (
        "the 3 runtimes of the [conformance matrix](conformance.md) (reference, onnxruntime, tract); "
        "tvm not installed where this site was built"
    )
