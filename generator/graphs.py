"""ONNX graph pictures: a small DOT emitter plus Debian's Graphviz ``dot`` for SVG.

``onnx.tools.net_drawer`` is gone in onnx 1.23, and Netron has no headless export,
so the project draws graphs itself. Graph inputs are ellipses, outputs double
ellipses, ops boxes labelled with their type and non-default attributes;
initializers are folded into their consumer's label to keep pictures readable.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess

import onnx
from onnx import helper

from generator.errors import UsageError

_MAX_ATTR_CHARS = 28


def _attr_text(attr: onnx.AttributeProto) -> str:
    if attr.type == onnx.AttributeProto.GRAPH:
        return f"{attr.name}=<graph>"
    if attr.type == onnx.AttributeProto.TENSOR:
        return f"{attr.name}=<tensor>"
    if attr.ref_attr_name:  # a function body's reference to the caller's attribute
        return f"{attr.name}=@{attr.ref_attr_name}"
    value = helper.get_attribute_value(attr)
    if isinstance(value, bytes):
        value = value.decode()
    text = f"{attr.name}={value}"
    return text if len(text) <= _MAX_ATTR_CHARS else text[: _MAX_ATTR_CHARS - 1] + "…"


def _shape_text(value: onnx.ValueInfoProto) -> str:
    if not value.type.HasField("tensor_type"):
        return ""
    tensor = value.type.tensor_type
    elem = helper.tensor_dtype_to_string(tensor.elem_type).removeprefix("TensorProto.").lower()
    dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
    return f"{elem}[{', '.join(dims)}]"


def _quote(text: str) -> str:
    """A DOT string literal; real newlines become DOT line breaks."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\n", "\\n") + '"'


def to_dot(graph: onnx.GraphProto, *, rankdir: str = "TB") -> str:
    """DOT source for one graph (subgraphs are shown as a ``<graph>`` attribute)."""
    initializers = {t.name for t in graph.initializer}
    producers: dict[str, str] = {}
    lines = [
        "digraph G {",
        f"  rankdir={rankdir}; bgcolor=transparent;",
        '  node [fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=9, color="#555555"];',
    ]
    for value in graph.input:
        if value.name in initializers:
            continue
        node_id = f"in_{value.name}"
        label = f"{value.name}\n{_shape_text(value)}"
        lines.append(f'  {_quote(node_id)} [shape=ellipse, style=filled, fillcolor="#e3f2fd", label={_quote(label)}];')
        producers[value.name] = node_id
    for i, node in enumerate(graph.node):
        node_id = f"n{i}"
        title = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        extras = [_attr_text(a) for a in node.attribute]
        weights = [name for name in node.input if name in initializers]
        extras += [f"{name} (weight)" for name in weights]
        label = "\n".join([title, *extras])
        lines.append(
            f'  {_quote(node_id)} [shape=box, style="rounded,filled", fillcolor="#fff3e0", label={_quote(label)}];'
        )
        for name in node.input:
            if name and name in producers:
                # Graph inputs already carry their name; label only intermediate tensors.
                label = "" if producers[name].startswith("in_") else f" [label={_quote(name)}]"
                lines.append(f"  {_quote(producers[name])} -> {_quote(node_id)}{label};")
        for name in node.output:
            if name:
                producers[name] = node_id
    for value in graph.output:
        node_id = f"out_{value.name}"
        label = f"{value.name}\n{_shape_text(value)}"
        lines.append(
            f'  {_quote(node_id)} [shape=ellipse, peripheries=2, style=filled, fillcolor="#e8f5e9", '
            f"label={_quote(label)}];"
        )
        if value.name in producers:
            lines.append(f"  {_quote(producers[value.name])} -> {_quote(node_id)};")
    lines.append("}")
    return "\n".join(lines) + "\n"


def dot_to_svg(dot: str) -> str:
    """Render DOT with Graphviz; the XML prologue is dropped so the SVG can be inlined."""
    exe = shutil.which("dot")
    if exe is None:
        raise UsageError("Graphviz `dot` is not installed; install the Debian package graphviz")
    svg = subprocess.run([exe, "-Tsvg"], input=dot, capture_output=True, text=True, check=True).stdout
    svg = svg[svg.index("<svg") :]
    return re.sub(r"<!--.*?-->\n?", "", svg, flags=re.S)


def graph_svg(model: onnx.ModelProto | onnx.GraphProto, *, rankdir: str = "TB") -> str:
    """An SVG picture of a model's main graph, ready for ``html="on"`` exec blocks."""
    graph = model.graph if isinstance(model, onnx.ModelProto) else model
    return dot_to_svg(to_dot(graph, rankdir=rankdir))


def function_svg(function: onnx.FunctionProto, *, rankdir: str = "TB") -> str:
    """An SVG picture of a function body (model-local function or proposed op)."""
    graph = helper.make_graph(
        list(function.node),
        html.escape(function.name),
        [helper.make_value_info(name, onnx.TypeProto()) for name in function.input],
        [helper.make_value_info(name, onnx.TypeProto()) for name in function.output],
    )
    return dot_to_svg(to_dot(graph, rankdir=rankdir))
