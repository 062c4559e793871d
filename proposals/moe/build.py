"""Models holding one MoE node, with its function body as model-local functions
(onnxscript's GraphBuilder, through :func:`generator.onnx_build.graph_builder`)."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import onnx
import onnx_ir as ir

from generator.onnx_build import PROPOSAL_DOMAIN, builder_model, graph_builder
from proposals.moe.body import build_function
from proposals.moe.schema import INPUT_NAMES, OPSET, SCHEMA, check_shapes, resolve


def moe_model(
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, object],
    *,
    graph_inputs: Collection[str] = ("X",),
    dynamic: bool = False,
    io_names: Mapping[str, str] = {},  # noqa: B006 (read only)
    onnx_grouped_matmul: bool = False,
) -> onnx.ModelProto:
    """One MoE node; ``arrays`` holds the op's inputs by name (absent optional inputs left
    out). Names in ``graph_inputs`` become graph inputs, the rest initializers.
    ``dynamic`` gives X symbolic leading axes so one model serves any token count;
    ``io_names`` renames X and Y in the graph. ``onnx_grouped_matmul`` builds the body on
    ai.onnx GroupedMatMul-29 (onnx 1.24) instead of the proposal-domain op."""
    present = [n for n in INPUT_NAMES if arrays.get(n) is not None]
    check_shapes(attrs, {n: arrays[n].shape for n in present})
    names = {n: io_names.get(n, n) for n in [*present, "Y"]}
    x_shape: list = list(arrays["X"].shape)
    if dynamic:
        x_shape = [f"d{i}" for i in range(len(x_shape) - 1)] + x_shape[-1:]
    b = graph_builder("moe", {"": OPSET, PROPOSAL_DOMAIN: 1})
    values: dict[str, ir.Value] = {}
    for n in present:
        if n in graph_inputs:
            shape = x_shape if n == "X" else list(arrays[n].shape)
            values[n] = b.input(names[n], ir.DataType.from_numpy(arrays[n].dtype), shape)
        else:
            values[n] = b.initializer(ir.tensor(arrays[n]), name=names[n])
    y = getattr(b.op, SCHEMA.name)(*(values.get(n) for n in INPUT_NAMES), _domain=PROPOSAL_DOMAIN, **resolve(attrs))
    y.producer().name = "moe"
    y.type, y.shape = ir.TensorType(ir.DataType.from_numpy(arrays["X"].dtype)), ir.Shape(x_shape)
    b.add_output(y, names["Y"])
    model = builder_model(b, build_function(attrs, present))
    if onnx_grouped_matmul:
        from proposals.moe.grouped_matmul import on_onnx_op

        return on_onnx_op(model)
    return model
