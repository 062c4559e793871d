"""Models holding one MoE node, with its function body as model-local functions."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import onnx
from onnx import helper

from generator.onnx_build import PROPOSAL_DOMAIN, initializer, make_model, tensor_info
from proposals.moe.body import build_function
from proposals.moe.schema import INPUT_NAMES, OPSET, SCHEMA, check_shapes, resolve


def moe_node(inputs: Mapping[str, str], output: str, attrs: Mapping[str, object], name: str = "moe") -> onnx.NodeProto:
    """A MoE node; ``inputs`` maps the op's input names to graph value names."""
    resolved = resolve(attrs)
    names = [inputs.get(formal, "") for formal in INPUT_NAMES]  # all 11: "" when absent
    return helper.make_node(SCHEMA.name, names, [output], name=name, domain=PROPOSAL_DOMAIN, **resolved)


def moe_model(
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, object],
    *,
    graph_inputs: Collection[str] = ("X",),
    dynamic: bool = False,
    io_names: Mapping[str, str] = {},  # noqa: B006 (read only)
) -> onnx.ModelProto:
    """One MoE node; ``arrays`` holds the op's inputs by name (absent optional inputs left
    out). Names in ``graph_inputs`` become graph inputs, the rest initializers.
    ``dynamic`` gives X symbolic leading axes so one model serves any token count;
    ``io_names`` renames X and Y in the graph."""
    present = [n for n in INPUT_NAMES if arrays.get(n) is not None]
    check_shapes(attrs, {n: arrays[n].shape for n in present})
    names = {n: io_names.get(n, n) for n in [*present, "Y"]}
    x = arrays["X"]
    x_shape: list = list(x.shape)
    if dynamic:
        x_shape = [f"d{i}" for i in range(len(x_shape) - 1)] + x_shape[-1:]
    inputs = [
        tensor_info(names[n], arrays[n].dtype, x_shape if n == "X" else arrays[n].shape)
        for n in present
        if n in graph_inputs
    ]
    graph = helper.make_graph(
        [moe_node(names, names["Y"], attrs)],
        "moe",
        inputs,
        [tensor_info(names["Y"], x.dtype, x_shape)],
        [initializer(n, arrays[n]) for n in present if n not in graph_inputs],
    )
    return make_model(graph, {"": OPSET, PROPOSAL_DOMAIN: 1}, build_function(attrs, present))
