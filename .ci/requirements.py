"""Print every requirement pyproject.toml pins, one per line, for ``pip install -r``.

The runtime dependencies, every extra and every dependency group (``include-group``
resolved): ``make venv`` sets up the whole working environment from this list. The project
itself is not installed; the source tree is used through PYTHONPATH, so several checkouts
can share one .venv.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def group(groups: dict[str, list], name: str) -> list[str]:
    out: list[str] = []
    for entry in groups[name]:
        out.extend(group(groups, entry["include-group"]) if isinstance(entry, dict) else [entry])
    return out


def requirements(pyproject: Path) -> list[str]:
    data = tomllib.loads(pyproject.read_text())
    project, groups = data["project"], data.get("dependency-groups", {})
    found = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        found.extend(extra)
    for name in groups:
        found.extend(group(groups, name))
    return list(dict.fromkeys(found))  # each once, in the file's order


if __name__ == "__main__":
    print("\n".join(requirements(Path(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml"))))
