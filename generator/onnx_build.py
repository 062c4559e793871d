"""Pinned model construction: every zoo model is stamped the same way, whoever builds it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper
from onnxscript import GraphBuilder

PRODUCER_NAME = "onnx-genai-proposals"
PRODUCER_VERSION = "1"  # fixed on purpose: a package version would change the bytes
PROPOSAL_DOMAIN = "org.onnx.genai.proposals"  # the project's own domain for proposed ops


def ir_version_for(opsets: Mapping[str, int]) -> int:
    """Lowest IR version that carries these opsets (from onnx's pinned version table)."""
    ids = [helper.make_opsetid(domain, version) for domain, version in opsets.items()]
    return helper.find_min_ir_version_for(ids, ignore_unknown=True)


def make_model(
    graph: onnx.GraphProto,
    opsets: Mapping[str, int],
    functions: Sequence[onnx.FunctionProto] = (),
) -> onnx.ModelProto:
    """Build a model with pinned IR version, opset imports and producer fields."""
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(opsets.items())],
        functions=list(functions),
        producer_name=PRODUCER_NAME,
        producer_version=PRODUCER_VERSION,
    )
    return stamp(model)


def _sort_attributes(nodes) -> None:
    """Attributes in name order, in every node and subgraph: builders emit them in an order
    that can depend on process state (onnxscript follows whatever schema is registered)."""
    for node in nodes:
        ordered = sorted(node.attribute, key=lambda a: a.name)
        del node.attribute[:]
        node.attribute.extend(ordered)
        for attribute in node.attribute:
            for graph in [attribute.g, *attribute.graphs] if attribute.HasField("g") else attribute.graphs:
                _sort_attributes(graph.node)


def stamp(model: onnx.ModelProto) -> onnx.ModelProto:
    """Pin IR version and producer fields of a model built elsewhere (onnxscript, torch),
    and put every node's attributes in name order, so the bytes never depend on how the
    builder happened to order them."""
    _sort_attributes(model.graph.node)
    for function in model.functions:
        _sort_attributes(function.node)
    opsets = {o.domain: o.version for o in model.opset_import}
    model.ir_version = max(ir_version_for(opsets), 10)
    model.producer_name = PRODUCER_NAME
    model.producer_version = PRODUCER_VERSION
    return model


def tensor_info(name: str, array_or_dtype: np.ndarray | np.dtype | type, shape=None) -> onnx.ValueInfoProto:
    """A graph input/output description from an array (or a dtype plus a symbolic shape)."""
    if isinstance(array_or_dtype, np.ndarray):
        dtype, shape = array_or_dtype.dtype, array_or_dtype.shape if shape is None else shape
    else:
        dtype = np.dtype(array_or_dtype)
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), shape)


def initializer(name: str, array: np.ndarray) -> onnx.TensorProto:
    """A named constant tensor for ``graph.initializer``."""
    # np.ascontiguousarray would turn a 0-d scalar into shape [1]
    return numpy_helper.from_array(np.asarray(array, order="C"), name)


def seeded(seed: int) -> np.random.RandomState:
    """The project's one RNG: legacy RandomState is frozen across numpy releases (NEP 19)."""
    return np.random.RandomState(seed)


def graph_builder(name: str, opsets: Mapping[str, int]) -> GraphBuilder:
    """An empty graph and onnxscript's imperative builder on it (``builder.op.MatMul(...)``).

    The project builds every model this way; ``builder.input`` declares graph inputs,
    ``builder.initializer`` adds weights, ``builder.add_output`` names outputs, and
    :func:`builder_model` turns the result into a stamped ``ModelProto``.
    """
    return GraphBuilder(ir.Graph([], [], nodes=[], opset_imports=dict(opsets), name=name))


def builder_model(builder: GraphBuilder, functions: Sequence[onnx.FunctionProto] = ()) -> onnx.ModelProto:
    """The stamped model of a :func:`graph_builder` graph.

    The builder's per-node scope annotations and its inferred intermediate shapes are
    dropped: a model's bytes carry the graph, not the build session that made it.
    """
    proto = ir.serde.serialize_model(ir.Model(builder.graph, ir_version=10))
    for node in proto.graph.node:
        del node.metadata_props[:]
    del proto.graph.value_info[:]
    proto.functions.extend(functions)
    return stamp(proto)


def value(name: str, dtype: ir.DataType, shape: Sequence[int | str | None]) -> ir.Value:
    """A typed value with a (partly symbolic) shape: a graph input or a named output."""
    return ir.val(name, dtype, shape)


def function_proto(function: ir.Function) -> onnx.FunctionProto:
    """The FunctionProto of an onnx-ir function (``onnxscript.build_function``'s result),
    without the builder's inferred types and scope notes, as :func:`builder_model` does."""
    proto = ir.serde.serialize_function(function)
    del proto.value_info[:]
    for node in proto.node:
        del node.metadata_props[:]
    return proto
