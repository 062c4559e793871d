"""The import rules of docs/architecture.md, checked by parsing every module's imports with ``ast``.

Every ``import`` and ``from ... import`` counts, at module level or inside a function (a
function-level import is how an import cycle hides).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("generator", "proposals", "conformance", "tests")

# Which other proposals a proposal may import. The KV-cache pattern imports none of its
# users; a proposal missing here may import no other proposal.
PROPOSAL_IMPORTS: dict[str, frozenset[str]] = {
    "kv_cache": frozenset(),
    "moe": frozenset(),
    "paged_attention": frozenset({"kv_cache"}),
    # kv_cache's decoder layer; paged_attention's rewrite (every decoder in a test) and block manager (paged serving);
    # moe's conversion of transformers MoE blocks, function op and substitution (MoE decoders);
    # linear_attention's conversion of gated-delta mixers (the hybrid decoders' recurrent layers)
    "text_pipeline": frozenset({"kv_cache", "paged_attention", "moe", "linear_attention"}),
    # kv_cache's cache step, text_pipeline's decoders (accuracy study, the pipeline's KV-cache format)
    "quantized_attention": frozenset({"kv_cache", "text_pipeline"}),
}

# Zoo topics that belong to the conformance layer: their cases are built from its repros and
# divergence table (conformance/ itself imports none of them).
CONFORMANCE_TOPICS = frozenset({"conformance_regressions"})

# Private names imported across modules that are known and owned by work in progress:
# (importer, module, name) -> why it is still there.
KNOWN_PRIVATE_IMPORTS = {}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name of the file
    module: str  # the module imported (a submodule when ``from pkg import submodule``)
    names: tuple[str, ...]  # the names taken from it (empty for ``import module``)
    line: int

    @property
    def where(self) -> str:
        return f"{self.importer} line {self.line}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_files() -> list[Path]:
    return sorted(
        path
        for layer in LAYERS
        for path in (ROOT / layer).rglob("*.py")
        if "templates" not in path.relative_to(ROOT).parts  # scaffold templates are not modules yet
    )


MODULES = {module_name(path): path for path in source_files()}


def imports_of(path: Path) -> list[Import]:
    """Every import of the project's own modules in one file, resolved to module names."""
    return list(imports_in(path.read_text(), module_name(path), is_package=path.name == "__init__.py"))


def imports_in(source: str, importer: str, *, is_package: bool) -> Iterator[Import]:
    """The project imports of ``source``, read as the module ``importer``."""
    package = importer if is_package else importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in LAYERS:
                    yield Import(importer, alias.name, (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against the importer's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] not in LAYERS:
                continue
            names = tuple(alias.name for alias in node.names)
            submodules = [n for n in names if f"{base}.{n}" in MODULES]
            for name in submodules:
                yield Import(importer, f"{base}.{name}", (), node.lineno)
            rest = tuple(n for n in names if n not in submodules)
            if rest or not submodules:
                yield Import(importer, base, rest, node.lineno)


IMPORTS = [imp for path in MODULES.values() for imp in imports_of(path)]


def _layer(module: str) -> str:
    return module.split(".")[0]


def _topic(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "proposals" and len(parts) > 1 else None


def test_the_scan_sees_the_project() -> None:
    assert {"generator.registry", "proposals.kv_cache.reference", "conformance.reference"} <= set(MODULES)
    assert any(i.importer == "generator.cli" and i.module == "generator.errors" for i in IMPORTS)


def test_the_spine_imports_no_proposal_and_no_conformance_code() -> None:
    """generator/ finds proposals by discovery (``proposals`` the namespace, then importlib),
    never by naming one."""
    bad = [
        f"{i.where}: {i.module}"
        for i in IMPORTS
        if _layer(i.importer) == "generator" and (_topic(i.module) or _layer(i.module) in ("conformance", "tests"))
    ]
    assert not bad, bad


def test_proposals_import_only_the_proposals_they_build_on() -> None:
    bad = []
    for i in IMPORTS:
        topic, target = _topic(i.importer), _topic(i.module)
        if topic is None or _layer(i.importer) != "proposals":
            continue
        if _layer(i.module) == "tests" or (_layer(i.module) == "conformance" and topic not in CONFORMANCE_TOPICS):
            bad.append(f"{i.where}: {i.module} (a proposal imports no conformance or test code)")
        elif target and target != topic and target not in PROPOSAL_IMPORTS.get(topic, frozenset()):
            bad.append(f"{i.where}: {i.module} ({topic} may import {sorted(PROPOSAL_IMPORTS.get(topic, ()))})")
    assert not bad, bad


def test_the_kv_pattern_imports_none_of_its_users() -> None:
    assert not PROPOSAL_IMPORTS["kv_cache"]
    users = [i for i in IMPORTS if _topic(i.importer) == "kv_cache" and _topic(i.module) not in (None, "kv_cache")]
    assert not users, [f"{i.where}: {i.module}" for i in users]


def test_conformance_uses_only_the_spine_and_the_proposals_references() -> None:
    """The fuzz suite checks runtimes against the float64 references, not against builders."""
    bad = [
        f"{i.where}: {i.module}"
        for i in IMPORTS
        if _layer(i.importer) == "conformance"
        and (_layer(i.module) == "tests" or (_topic(i.module) and not i.module.endswith(".reference")))
    ]
    assert not bad, bad


def test_no_private_name_is_imported_from_another_module() -> None:
    """A leading underscore means "this module only"; tests may reach into what they test."""
    bad = {
        (i.importer, i.module, name): i.where
        for i in IMPORTS
        for name in i.names
        if name.startswith("_") and not name.startswith("__") and _layer(i.importer) != "tests"
        if ".tests." not in f"{i.importer}." and i.module != i.importer
    }
    unexpected = {key: where for key, where in bad.items() if key not in KNOWN_PRIVATE_IMPORTS}
    assert not unexpected, [f"{where}: {module}.{name}" for (_, module, name), where in unexpected.items()]
    stale = set(KNOWN_PRIVATE_IMPORTS) - set(bad)
    assert not stale, f"no longer imported, drop from KNOWN_PRIVATE_IMPORTS: {sorted(stale)}"


def _private_member_reads(paths: list[str], stdin: str | None = None) -> list[str]:
    """ruff's flake8-self rule (SLF001, as configured in pyproject.toml) over ``paths``."""
    command = [sys.executable, "-m", "ruff", "check", "--select", "SLF001", "--output-format", "concise", "--quiet"]
    result = subprocess.run([*command, *paths], cwd=ROOT, input=stdin, capture_output=True, text=True)
    assert result.returncode in (0, 1), result.stderr
    return result.stdout.splitlines()


def test_no_private_member_is_read_from_another_module() -> None:
    """The other spelling, ``module._name`` or ``obj._name`` outside its class."""
    found = _private_member_reads(list(LAYERS))
    assert not found, found


def test_the_private_member_rule_sees_attribute_access() -> None:
    source = "from proposals.quantized_attention import build\n\nbuild._dynamic_scale()\ncalib._empty(3)\n"
    found = _private_member_reads(["--stdin-filename", "proposals/quantized_attention/x.py", "-"], source)
    assert [line.rsplit(" ", 1)[-1] for line in found] == ["`_dynamic_scale`", "`_empty`"]


def environment_writes(source: str) -> list[int]:
    """Lines that change the process environment: ``os.environ[k] = v``, ``del os.environ[k]``,
    ``os.environ.update/setdefault/pop/clear(...)``, ``os.putenv``, ``os.unsetenv``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        targets = node.targets if isinstance(node, ast.Assign | ast.Delete) else []
        if isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        subscripts = [t.value for t in targets if isinstance(t, ast.Subscript)]
        if any(ast.unparse(v) == "os.environ" for v in subscripts):
            lines.append(node.lineno)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner, name = ast.unparse(node.func.value), node.func.attr
            mutators = ("update", "setdefault", "pop", "popitem", "clear", "__setitem__", "__delitem__")
            if (owner == "os.environ" and name in mutators) or (owner == "os" and name in ("putenv", "unsetenv")):
                lines.append(node.lineno)
    return lines


# The deliberate exceptions: the engines read their telemetry opt-out at import, and it must
# reach every child process too (docs/runtimes.md, "Telemetry"); the real-model bench's spawned
# children each set OpenMP's wait policy in their own environment before it loads (the parent's
# is never changed: `set_wait_policy` runs only as a child's first step).
ENVIRONMENT_WRITERS = {"generator.telemetry", "proposals.text_pipeline.real_throughput"}


def test_no_module_changes_the_process_environment() -> None:
    """A setting a module writes into ``os.environ`` leaks into every later test and every
    child process: tests scope theirs with ``monkeypatch``, children get ``env=``."""
    found = [
        f"{name} line {line}"
        for name, path in MODULES.items()
        if name not in ENVIRONMENT_WRITERS
        for line in environment_writes(path.read_text())
    ]
    assert not found, found
    assert all(environment_writes(MODULES[name].read_text()) for name in ENVIRONMENT_WRITERS)


def test_environment_writes_are_seen() -> None:
    source = 'import os\nos.environ["A"] = "0"\nos.environ.update(B="1")\nos.putenv("C", "2")\nenv = dict(os.environ)\n'
    assert environment_writes(source) == [2, 3, 4]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for i in IMPORTS:
        if i.module in MODULES and i.module != i.importer:
            graph[i.importer].add(i.module)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules, in order), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node], _ = 2, path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_find_cycle_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    """A module never imports, directly or through others, a module that imports it (a
    package's ``__init__`` counts as a module; importing a submodule does not import the
    package's names)."""
    cycle = find_cycle(_graph())
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from proposals.text_pipeline import reference\n", ("proposals.text_pipeline.reference", ())),
        (
            "from proposals.text_pipeline.pipeline import Pipeline\n",
            ("proposals.text_pipeline.pipeline", ("Pipeline",)),
        ),
        ("from . import reference\n", ("proposals.text_pipeline.reference", ())),
        ("import generator.errors\n", ("generator.errors", ())),
        ("import numpy\n", None),
    ],
)
def test_imports_are_resolved_to_modules(source: str, expected: tuple | None) -> None:
    found = [(i.module, i.names) for i in imports_in(source, "proposals.text_pipeline.cases", is_package=False)]
    assert found == ([expected] if expected else [])
