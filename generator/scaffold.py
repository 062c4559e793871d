"""``python -m generator new-proposal NAME``: a new proposal folder that passes ``make test``.

It renders the templates in ``generator/templates/proposal/``, adds the page to the
site navigation, and writes the example case to the zoo, so the checkout stays green.
"""

from __future__ import annotations

import importlib
import keyword
import re
import shutil
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from generator.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).resolve().parent / "templates" / "proposal"
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{1,40}$")


def check_name(name: str, root: Path = ROOT) -> None:
    if not NAME_PATTERN.fullmatch(name) or keyword.iskeyword(name):
        raise UsageError(
            f"invalid proposal name {name!r}; valid: lowercase snake_case, 2-41 characters, "
            "starting with a letter (e.g. flex_attention)"
        )
    if (root / "proposals" / name).exists():
        raise UsageError(f"proposals/{name} already exists; choose another name")


def render(name: str, root: Path = ROOT) -> list[Path]:
    """Write the proposal's files from the templates; returns the paths written."""
    env = Environment(loader=FileSystemLoader(TEMPLATES), undefined=StrictUndefined, keep_trailing_newline=True)
    context = {
        "name": name,
        "title": name.replace("_", " ").capitalize(),
        "function": "leaky_identity",
        "case": "example",
    }
    written = []
    for template in sorted(TEMPLATES.rglob("*.j2")):
        rel = template.relative_to(TEMPLATES).as_posix()
        target = root / "proposals" / name / rel.removesuffix(".j2")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(env.get_template(rel).render(context))
        written.append(target)
    return written


def add_to_nav(name: str, root: Path = ROOT) -> None:
    """Append ``proposals/NAME/README.md`` to the Proposals section of ``mkdocs.yml``."""
    path = root / "mkdocs.yml"
    lines = path.read_text().splitlines(keepends=True)
    try:
        start = next(i for i, line in enumerate(lines) if line.rstrip() == "  - Proposals:")
    except StopIteration:
        raise UsageError("mkdocs.yml has no '  - Proposals:' nav section to add the page to") from None
    end = start + 1
    while end < len(lines) and lines[end].startswith("      "):
        end += 1
    title = name.replace("_", " ").capitalize()
    lines.insert(end, f"      - {title}: proposals/{name}/README.md\n")
    path.write_text("".join(lines))


def new_proposal(name: str, root: Path = ROOT) -> list[Path]:
    """Create ``proposals/NAME/``, register its page, write its example case to the zoo and
    record that case's conformance baseline.

    All or nothing: if a step fails, every file it wrote is removed and every file it changed
    (the nav, the zoo manifest, the baseline) is restored.
    """
    from generator import baseline
    from generator.zoo import manifest_path

    check_name(name, root)
    zoo_topic = root / "zoo" / name
    if zoo_topic.exists():
        raise UsageError(f"zoo/{name} already exists; remove it (`make zoo` prunes it) or choose another name")
    baseline_path = root / baseline.BASELINE.relative_to(ROOT)
    changed = [root / "mkdocs.yml", manifest_path(root / "zoo"), baseline_path]
    before = {path: path.read_bytes() if path.exists() else None for path in changed}
    try:
        written = render(name, root)
        add_to_nav(name, root)
        from generator import zoo
        from generator.registry import discover, select

        importlib.invalidate_caches()
        importlib.import_module(f"proposals.{name}.cases")
        discover.cache_clear()
        zoo.write(select([name]), root / "zoo", prune=False)
        record_baseline(name, root / "zoo", baseline_path)
    except BaseException:
        shutil.rmtree(root / "proposals" / name, ignore_errors=True)
        shutil.rmtree(zoo_topic, ignore_errors=True)
        for path, data in before.items():
            if data is not None:
                path.write_bytes(data)
            else:
                path.unlink(missing_ok=True)
        raise
    return written


def record_baseline(name: str, zoo_dir: Path, path: Path) -> None:
    """Run the new topic's cases on every runtime and record their statuses."""
    from generator import baseline, runtimes, verify

    matrix = verify.verify(runtimes.available(), [name], zoo_dir)
    data, _ = baseline.recorded(matrix, baseline.load(path), full=False)
    baseline.save(data, path)
