"""Print every requirement pyproject.toml pins, one per line, for ``pip install -r``.

The runtime dependencies, every extra but those built from source, and every dependency group
(``include-group`` resolved): ``make venv`` sets up the whole working environment from this
list. ``--extra NAME`` prints that one extra alone (``make bench`` installs ``bench``, which
compiles llama.cpp, this way, and goes on without it if the build fails). The project itself
is not installed; the source tree is used through PYTHONPATH, so several checkouts can share
one .venv.
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


BUILT_FROM_SOURCE = ("bench",)  # extras that need a compiler: installed by their own make target


def requirements(pyproject: Path) -> list[str]:
    data = tomllib.loads(pyproject.read_text())
    project, groups = data["project"], data.get("dependency-groups", {})
    found = list(project["dependencies"])
    for name, extra in project.get("optional-dependencies", {}).items():
        if name not in BUILT_FROM_SOURCE:
            found.extend(extra)
    for name in groups:
        found.extend(group(groups, name))
    return list(dict.fromkeys(found))  # each once, in the file's order


def extra(pyproject: Path, name: str) -> list[str]:
    extras = tomllib.loads(pyproject.read_text())["project"].get("optional-dependencies", {})
    if name not in extras:
        print(f"no extra {name!r} in {pyproject}; valid: {', '.join(extras)}", file=sys.stderr)
        sys.exit(2)
    return list(extras[name])


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["--extra"]:
        print("\n".join(extra(Path(args[2] if len(args) > 2 else "pyproject.toml"), args[1])))
    else:
        print("\n".join(requirements(Path(args[0] if args else "pyproject.toml"))))
