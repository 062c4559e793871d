"""`new-proposal` creates a proposal that passes the checks at once; the lint catches gaps."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from generator.lint import proposal_pages, section_problems
from generator.scaffold import TEMPLATES
from generator.verify import CELL_CACHE

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("page", proposal_pages(), ids=lambda p: p.parent.name)
def test_every_proposal_page_has_the_sections(page: Path) -> None:
    assert section_problems(page.read_text()) == []


def test_lint_catches_a_missing_and_a_misplaced_section() -> None:
    text = (TEMPLATES / "README.md.j2").read_text()
    assert section_problems(text) == []
    assert section_problems(text.replace("## Alternatives", "## Other ideas")) == ["missing section '## Alternatives'"]
    swapped = "\n".join(
        f"## {title}"
        for title in (
            "Summary",
            "Motivation",
            "Schema",
            "Examples",
            "Backend support",
            "Open questions",
            "Alternatives",
        )
    )
    swapped = swapped.replace("## Summary", "## Summary\n\n**Conclusion:** yes.\n")
    assert section_problems(swapped) == ["section '## Open questions' is out of order"]


def test_headings_inside_code_fences_do_not_count() -> None:
    assert section_problems("```\n## Summary\n```\n")[0] == "missing section '## Summary'"


def _run(cmd: list[str], cwd: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(cwd), NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"


# The copy's strict site build re-runs every page's examples (about 3 minutes of the 5 that
# `make test` may take): CI sets this and builds it; `make docs` builds this checkout's site.
SCAFFOLD_SITE = "ONNX_GENAI_SCAFFOLD_SITE"


@pytest.fixture(scope="module")
def scaffolded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout's files with ``new-proposal demo_idea`` run in it."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    copy = tmp_path_factory.mktemp("scaffold") / "repo"
    for rel in filter(None, files.decode().split("\0")):
        target = copy / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / rel).exists():
            shutil.copy2(ROOT / rel, target)
    _run([sys.executable, "-m", "generator", "new-proposal", "demo_idea"], copy)
    return copy


@pytest.mark.slow
def test_new_proposal_passes_the_checks_in_a_copy(scaffolded: Path, tmp_path: Path) -> None:
    copy, py = scaffolded, sys.executable
    assert "      - Demo idea: proposals/demo_idea/README.md" in (copy / "mkdocs.yml").read_text()
    _run([py, "-m", "ruff", "check", "generator", "proposals", "tests"], copy)
    _run([py, "-m", "generator", "verify", "demo_idea", "--json", str(tmp_path / "m.json")], copy)
    _run(
        [
            py,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "proposals/demo_idea",
            "tests/test_scaffold.py::test_every_proposal_page_has_the_sections",
            "tests/test_spine.py::test_committed_zoo_lists_every_registered_case",
            # the other topics are this checkout's, which test_spine checks here
            "tests/test_spine.py::test_committed_zoo_matches_the_case_functions[demo_idea]",
        ],
        copy,
    )


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get(SCAFFOLD_SITE), reason=f"CI only ({SCAFFOLD_SITE}=1): a second site build")
def test_new_proposal_page_builds_in_the_strict_site(scaffolded: Path, tmp_path: Path) -> None:
    copy = scaffolded
    # The posts link to no proposal page and `make docs` builds them: left out here, so this
    # build re-executes only what the scaffold can affect (about half a minute less).
    for post in (copy / "docs/blog/posts").glob("*.md"):
        post.unlink()
    # The matrix's cells of the other cases are this checkout's: the copy reuses them.
    if CELL_CACHE.is_dir():
        shutil.copytree(CELL_CACHE, copy / CELL_CACHE.relative_to(ROOT), dirs_exist_ok=True)
    _run([str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")], copy)
    assert (tmp_path / "site/proposals/demo_idea/index.html").exists()


def _tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def test_a_failed_new_proposal_leaves_nothing_behind(tmp_path: Path) -> None:
    """The last step (the baseline) fails after the zoo case and its manifest entry were
    written: the rollback removes every file the command wrote and restores every file it
    changed. It runs in a child on a copy of what the command reads, since the child imports
    the new proposal's modules from the copy."""
    listed = subprocess.run(["git", "ls-files", "-z", "generator"], cwd=ROOT, capture_output=True, check=True).stdout
    needed = ["mkdocs.yml", "pyproject.toml", "zoo/manifest.json", "conformance/baseline.json", "proposals/__init__.py"]
    copy = tmp_path / "repo"
    for rel in [*filter(None, listed.decode().split("\0")), *needed]:
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, copy / rel)
    before = _tree(copy)
    code = (
        "from generator import scaffold\n"
        "def fail(name, zoo, path):\n"
        "    written = (zoo / name / 'test_example').is_dir() and name in (zoo / 'manifest.json').read_text()\n"
        "    raise RuntimeError('baseline failed' + (' after the zoo was written' if written else ''))\n"
        "scaffold.record_baseline = fail\n"
        "scaffold.new_proposal('demo_idea')\n"
    )
    env = dict(os.environ, PYTHONPATH=str(copy))
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=copy, env=env, capture_output=True, text=True, timeout=300
    )
    assert "RuntimeError: baseline failed after the zoo was written" in result.stderr, result.stderr[-3000:]
    after = _tree(copy)
    assert sorted(after.keys() - before.keys()) == []
    assert [rel for rel in before if after.get(rel) != before[rel]] == []


def test_no_snippet_include_is_mangled() -> None:
    from generator.lint import mangled_includes, markdown_pages

    assert mangled_includes('```python\n--8 < --"proposals/x.py:y"\n```') == ['--8 < --"proposals/x.py:y"']
    assert mangled_includes('```python\n--8<-- "proposals/x.py:y"\n```') == []
    bad = {str(p.relative_to(ROOT)): mangled_includes(p.read_text()) for p in markdown_pages()}
    assert not {k: v for k, v in bad.items() if v}


def test_fences_close_only_on_their_own_marker() -> None:
    from generator.lint import headings

    text = "~~~~markdown\n```python\n## Hidden\n```\n~~~~\n## Shown\n"
    assert headings(text) == ["Shown"]
