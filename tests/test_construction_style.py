"""One construction style for every graph the project builds (issue 14, item 1).

Models are built with onnxscript's GraphBuilder (``generator.onnx_build.graph_builder``),
function bodies are onnxscript ``@script``, graph edits are onnx-ir passes. Dtypes are
named (``ir.DataType.INT64``, ``onnx.TensorProto.INT64``), never raw integers. This test
reads the source of every non-test module under ``proposals/``, ``generator/`` and
``conformance/`` (and the scaffold templates) and fails on what the style rules out:

- ``helper.make_node(...)`` / ``helper.make_graph(...)`` (hand-assembled protos);
- ``make_tensor(name, 7, ...)`` or ``make_tensor_value_info(name, 7, ...)``: a raw dtype;
- ``to=7`` in a call, or ``{"to": 7}`` in an attribute dict: a raw Cast target;
- proto surgery: appending to, inserting into, deleting from or assigning items of a
  proto's repeated fields (``node``, ``input``, ``output``, ``initializer``,
  ``opset_import``, ``attribute``, ``functions``), ``CopyFrom`` / ``ClearField`` /
  ``MergeFrom``, and ``helper.make_opsetid``. onnx-ir spells its containers ``inputs``,
  ``outputs``, ``initializers``, ``opset_imports`` and ``attributes``, and its
  ``functions`` is a dict (item assignment and ``pop`` are ir edits); dropping a
  serialized model's inferred ``value_info`` is not an edit of the graph.

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
PROTO_BUILDERS = {"make_node", "make_graph", "make_opsetid"}
PROTO_FIELDS = {"node", "input", "output", "initializer", "opset_import", "attribute", "functions"}
LIST_EDITS = {"append", "extend", "insert", "remove", "pop"}
PROTO_COPIES = {"CopyFrom", "ClearField", "MergeFrom"}
DTYPE_ARG = {"make_tensor": 1, "make_tensor_value_info": 1}  # positional index of the dtype

# module -> why it may assemble protos by hand
ALLOWED: dict[str, str] = {
    "generator/graphs.py": "draws a FunctionProto: wraps its nodes in a GraphProto for the renderer, builds nothing",
    "generator/onnx_build.py": (
        "the one place a finished proto is pinned: make_model/stamp set opsets, IR version and attribute order"
    ),
    "conformance/lowering.py": (
        "onnx's context-dependent Attention body lists outputs it does not compute, which onnx-ir cannot "
        "read: the proto onnx returns is trimmed and given placeholders first, then edited in onnx-ir"
    ),
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


def _proto_field(node: ast.AST) -> str | None:
    """The repeated proto field ``node`` names (``x.node``, ``x.opset_import``), if it does."""
    if isinstance(node, ast.Attribute) and node.attr in PROTO_FIELDS:
        return node.attr
    return None


def _surgery(node: ast.AST) -> str | None:
    """What ``node`` does to a proto by hand, if it edits one."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        method, owner = node.func.attr, node.func.value
        field = _proto_field(owner)
        # an onnx-ir Model's ``functions`` is a dict: its pop() is not a proto edit
        if field and method in LIST_EDITS and not (field == "functions" and method == "pop"):
            return f".{field}.{method}(...) edits a proto by hand"
        if method in PROTO_COPIES:
            return f".{method}(...) edits a proto by hand"
    targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else []
    for target in targets:
        field = _proto_field(target.value) if isinstance(target, ast.Subscript) else None
        if field and not (field == "functions" and isinstance(node, ast.Assign)):
            verb = "del" if isinstance(node, ast.Delete) else "item assignment on"
            return f"{verb} .{target.value.attr}[...] edits a proto by hand"
    return None


def _is_int(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int


def violations(source: str) -> list[str]:
    """Every construction the style rules out in ``source``, as ``line: what``."""
    tree = ast.parse(source)
    helpers = _proto_helpers(tree)
    found = []
    for node in ast.walk(tree):
        edit = _surgery(node)
        if edit:
            found.append(f"{node.lineno}: {edit}")
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
        ("from onnx import helper\nhelper.make_opsetid('', 21)", "make_opsetid"),
        ("del proto.opset_import[:]", "del .opset_import"),
        ("function.opset_import.extend(imports)", ".opset_import.extend"),
        ("wrapper.node[0].input.append('bias')", ".input.append"),
        ("proto.node.insert(0, constant)", ".node.insert"),
        ("loop.input[1] = 'loop_forever'", "item assignment on .input"),
        ("out.CopyFrom(model)", ".CopyFrom"),
        ("replacement.ClearField('opset_import')", ".ClearField"),
        ("model.functions.extend(functions)", ".functions.extend"),
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


def test_onnx_ir_edits_pass() -> None:
    source = (
        "model.functions[function.identifier()] = function\nmodel.functions.pop(key)\n"
        "graph.inputs.append(value)\ngraph.inputs.insert(1, value)\nmodel.opset_imports.clear()\n"
        "del function.outputs[2:]\nnode.attributes.clear()\ndel proto.graph.value_info[:]\n"
    )
    assert violations(source) == []
