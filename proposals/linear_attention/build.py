"""Graph builders of the Linear attention proposal (onnxscript's GraphBuilder, named dtypes)."""

from __future__ import annotations

import onnx
import onnx_ir as ir

from generator.onnx_build import builder_model, graph_builder


def leaky_identity_model(alpha: float, shape: list[int]) -> onnx.ModelProto:
    """``y = Where(x > 0, x * alpha, x)`` from standard ops (opset 21)."""
    b = graph_builder("leaky_identity", {"": 21})
    op = b.op
    x = b.input("x", ir.DataType.FLOAT, shape)
    zero = op.initializer(ir.tensor(0.0, dtype=ir.DataType.FLOAT), "zero")
    scale = op.initializer(ir.tensor(alpha, dtype=ir.DataType.FLOAT), "alpha")
    b.add_output(op.Where(op.Greater(x, zero), op.Mul(x, scale), x), "y")
    return builder_model(b)
