"""One construction style for every graph the project builds (issue 14, item 1).

Models are built with onnxscript's GraphBuilder (``generator.onnx_build.graph_builder``),
function bodies are onnxscript ``@script``, graph edits are onnx-ir passes. Dtypes are
named (``ir.DataType.INT64``, ``onnx.TensorProto.INT64``), never raw integers. This test
reads the source of every non-test module under ``proposals/``, ``generator/`` and
``conformance/`` (and the scaffold templates) and fails on what the style rules out:

- ``helper.make_node(...)`` / ``helper.make_graph(...)`` (hand-assembled protos);
- ``make_tensor(name, 7, ...)`` or ``make_tensor_value_info(name, 7, ...)``: a raw dtype;
- ``to=7`` in a call, or ``{"to": 7}`` in an attribute dict: a raw Cast target.

Tests that exercise raw protos on purpose are not read. A module that legitimately
handles raw protos is listed in :data:`ALLOWED` with its reason.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("proposals", "generator", "conformance")
PROTO_BUILDERS = {"make_node", "make_graph"}
DTYPE_ARG = {"make_tensor": 1, "make_tensor_value_info": 1}  # positional index of the dtype

# module -> why it may assemble protos by hand
ALLOWED: dict[str, str] = {
    "generator/graphs.py": "draws a FunctionProto: wraps its nodes in a GraphProto for the renderer, builds nothing",
    "proposals/moe/body.py": "being converted (MoE helper, issue 14)",
    "conformance/examples.py": "being converted (conformance helper, issue 14)",
    "conformance/repros.py": "being converted (conformance helper, issue 14)",
    "conformance/lowering.py": "being converted (conformance helper): a placeholder node in a FunctionProto body",
}


def _modules() -> list[Path]:
    files = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if "tests" in rel.parts or rel.name.startswith("test_"):
                continue
            files.append(path)
    return files


def _proto_helpers(tree: ast.Module) -> dict[str, str]:
    """Local name -> onnx.helper function, for ``from onnx.helper import make_node [as x]``."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "onnx.helper":
            names |= {a.asname or a.name: a.name for a in node.names if a.name in PROTO_BUILDERS | set(DTYPE_ARG)}
    return names


def _called(call: ast.Call, helpers: dict[str, str]) -> str | None:
    """The onnx.helper function a call invokes (``helper.x``, ``onnx.helper.x`` or an imported ``x``)."""
    func = call.func
    if isinstance(func, ast.Attribute):
        owner = func.value
        if isinstance(owner, ast.Name) and owner.id == "helper":
            return func.attr
        if isinstance(owner, ast.Attribute) and owner.attr == "helper":
            return func.attr
    if isinstance(func, ast.Name):
        return helpers.get(func.id)
    return None


def _is_int(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def violations(source: str) -> list[str]:
    """Every construction the style rules out in ``source``, as ``line: what``."""
    tree = ast.parse(source)
    helpers = _proto_helpers(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = _called(node, helpers)
            if name in PROTO_BUILDERS:
                found.append(f"{node.lineno}: helper.{name}(...) assembles a proto by hand")
            if name in DTYPE_ARG:
                index = DTYPE_ARG[name]
                dtype = node.args[index] if len(node.args) > index else None
                dtype = next((k.value for k in node.keywords if k.arg in ("data_type", "elem_type")), dtype)
                if _is_int(dtype):
                    found.append(f"{node.lineno}: {name}(...) with the raw dtype {dtype.value}")
            for keyword in node.keywords:
                if keyword.arg == "to" and _is_int(keyword.value):
                    found.append(f"{node.lineno}: to={keyword.value.value} (a raw dtype)")
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == "to" and _is_int(value):
                    found.append(f"{node.lineno}: {{'to': {value.value}}} (a raw dtype)")
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_module_builds_graphs_in_the_project_style(path: Path) -> None:
    rel = path.relative_to(ROOT).as_posix()
    found = violations(path.read_text())
    if rel in ALLOWED:
        assert found, f"{rel} no longer assembles protos by hand: remove it from ALLOWED"
        return
    assert not found, f"{rel}:\n" + "\n".join(found)


def test_scaffold_templates_use_named_dtypes() -> None:
    pattern = re.compile(r"helper\.make_(node|graph)\(|\bto=\d|make_tensor(_value_info)?\([^,()]+,\s*\d")
    for path in sorted((ROOT / "generator" / "templates").rglob("*.j2")):
        assert not pattern.search(path.read_text()), path.relative_to(ROOT)


def test_allow_list_names_real_modules() -> None:
    for rel in ALLOWED:
        assert (ROOT / rel).is_file(), rel


@pytest.mark.parametrize(
    ("source", "what"),
    [
        ("from onnx import helper\nhelper.make_node('Relu', ['x'], ['y'])", "assembles a proto"),
        ("import onnx\nonnx.helper.make_graph([], 'g', [], [])", "assembles a proto"),
        ("from onnx.helper import make_node as mk\nmk('Relu', ['x'], ['y'])", "assembles a proto"),
        ("from onnx import helper\nhelper.make_tensor('zero', 1, [], [0.0])", "raw dtype 1"),
        ("from onnx import helper\nhelper.make_tensor_value_info('x', elem_type=7, shape=[1])", "raw dtype 7"),
        ("op.Cast(x, to=7)", "to=7"),
        ("tape.op('Cast', [x], {'to': 6})", "'to': 6"),
    ],
)
def test_the_checker_catches_each_form(source: str, what: str) -> None:
    assert any(what in v for v in violations(source)), violations(source)


def test_named_dtypes_pass() -> None:
    source = (
        "import onnx\nimport onnx_ir as ir\nfrom onnx import helper\n"
        "op.Cast(x, to=onnx.TensorProto.INT64)\nop.Cast(x, to=ir.DataType.INT32)\n"
        "helper.make_tensor_value_info('x', onnx.TensorProto.FLOAT, [1])\n"
    )
    assert violations(source) == []
