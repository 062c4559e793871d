"""The one plug-in discovery rule: the project's pyproject table, then installed entry points.

Every extension point that a layer cannot import by name (the matrix's runtimes, the text
pipeline's backends and KV-cache formats) is a :class:`PluginKind`, declared by the module
that owns its registry. Its plug-ins are

1. the ``module`` or ``module:object`` targets listed under ``[tool.onnx-genai-proposals]
   <setting>`` in pyproject.toml, in order: the source tree runs in place (PYTHONPATH, not
   installed), so it cannot declare entry points for its own modules;
2. then the entry points of ``group`` that installed packages declare, sorted by name.

Loading a target imports its module (a registry's extension registers itself on import) and
returns the named object, or the module itself. A target that cannot be imported is a
one-line :class:`UsageError` naming the target, where it was listed and why.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from generator import project
from generator.errors import UsageError
from generator.project import TABLE, setting_list


@dataclass(frozen=True)
class PluginKind:
    """One extension point: its pyproject setting, its entry-point group, and what it is called."""

    setting: str  # key of [tool.onnx-genai-proposals] in pyproject.toml
    group: str  # importlib.metadata entry-point group
    noun: str  # "runtime", "pipeline backend", ... (error messages)


@dataclass(frozen=True)
class Plugin:
    """A target (``module`` or ``module:object``) and where it was listed."""

    target: str
    source: str


def plugins(kind: PluginKind, pyproject: Path | None = None) -> list[Plugin]:
    """Every plug-in of ``kind``: the project's table first, in order, then entry points by name."""
    pyproject = pyproject or project.PYPROJECT
    table = f"{pyproject.name} [tool.{TABLE}] {kind.setting}"
    listed = [Plugin(target, table) for target in setting_list(kind.setting, pyproject)]
    installed = [
        Plugin(ep.value, f"entry point {ep.name!r} of group {kind.group}")
        for ep in sorted(entry_points(group=kind.group), key=lambda ep: ep.name)
    ]
    return listed + installed


def load(plugin: Plugin, kind: PluginKind) -> object:
    """Import ``plugin``'s module and return its object (the module when no ``:object``)."""
    module_name, _, attribute = plugin.target.partition(":")
    where, listed = f"{kind.noun} {plugin.target!r}", f"(from {plugin.source})"
    if not module_name or (":" in plugin.target and not attribute):
        raise UsageError(f"{where}: expected module or module:name, e.g. mypkg.plugin or mypkg.plugin:Thing {listed}")
    try:
        found: object = importlib.import_module(module_name)
        for name in attribute.split(".") if attribute else ():
            found = getattr(found, name)
    except Exception as err:  # noqa: BLE001 - plug-in code may raise anything on import
        reason = (str(err).strip().splitlines() or [""])[0]
        raise UsageError(f"{where}: cannot import it ({type(err).__name__}: {reason}) {listed}") from None
    return found


def discover(kind: PluginKind, pyproject: Path | None = None) -> list[object]:
    """Load every plug-in of ``kind`` (see the module docstring for the order)."""
    return [load(plugin, kind) for plugin in plugins(kind, pyproject)]


@functools.cache
def discovered(kind: PluginKind) -> tuple[object, ...]:
    """:func:`discover` once per process, for registries whose extensions register on import.
    A failure is not cached: the next call raises the same one-line error again."""
    return tuple(discover(kind))
