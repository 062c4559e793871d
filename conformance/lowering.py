"""A compatibility lowering: TensorScatter-24 and Attention-23/24/25 rewritten into older
standard ops, for runtimes that lack them.

- **TensorScatter** becomes one ``ScatterElements`` (opset 18) whose indices are
  ``write_indices[b] + s`` (``mod max_sequence_length`` in circular mode), expanded to the
  update's shape: ``Range``, ``Add``, ``Mod``, ``Unsqueeze``, ``Expand``.
- **Attention** becomes its own function body: onnx builds it for the node's attributes and
  input types (the schema's context-dependent function, MatMul/Softmax/Where and friends),
  and onnx-ir's ``InlinePass`` inlines it. **LinearAttention-27** the same way (its body is
  a Scan over the tokens, which is also what onnxruntime 1.32 runs).

Only nodes of the main graph are lowered (input types come from shape inference there);
nodes inside model-local functions or subgraphs are left as they are, and so is a
TensorScatter whose cache type ScatterElements-18 does not take (float8, int4, uint4: no
standard scatter accepts them before TensorScatter-24).
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
from onnx import defs
from onnx_ir.passes.common import IdentityEliminationPass, InlinePass, RemoveUnusedNodesPass

#: Domain of the temporary model-local functions that hold Attention bodies until inlined.
_BODIES = "lowering.attention"
#: Ops replaced by their schema's context-dependent function body.
BODY_OPS = ("Attention", "LinearAttention")


def lower(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every TensorScatter and Attention of its main graph rewritten."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    types = _value_types(model)
    lowered = ir.from_proto(model)
    for index, node in enumerate(list(lowered.graph)):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "TensorScatter":
            _lower_tensor_scatter(lowered.graph, node)
        elif node.op_type in BODY_OPS:
            _body_to_call(lowered, node, types, opset, index)
    if any(f.domain == _BODIES for f in lowered.functions.values()):
        InlinePass(criteria=lambda f: f.domain == _BODIES)(lowered)
        RemoveUnusedNodesPass()(lowered)  # the body's outputs the node does not ask for
        # An output computed as Identity(x) would leave some runtimes (OpenVINO) two names for
        # one tensor; without the Identity the output's name is the only one.
        IdentityEliminationPass()(lowered)
        lowered.opset_imports.pop(_BODIES, None)
    return ir.to_proto(lowered)


def lowers(model: onnx.ModelProto) -> bool:
    """Whether ``model``'s main graph has a TensorScatter or Attention."""
    return any(n.op_type in ("TensorScatter", *BODY_OPS) and n.domain in ("", "ai.onnx") for n in model.graph.node)


def _scatter_types() -> set[str]:
    constraint = next(c for c in defs.get_schema("ScatterElements", 18).type_constraints if c.type_param_str == "T")
    return set(constraint.allowed_type_strs)


#: ``tensor(...)`` types ScatterElements-18 accepts as data.
SCATTER_TYPES = _scatter_types()


def scatterable(value: ir.Value) -> bool:
    """Whether a cache of ``value``'s type can go through ScatterElements."""
    return value.type is not None and f"tensor({value.type.dtype.name.lower()})" in SCATTER_TYPES


def _value_types(model: onnx.ModelProto) -> dict[str, onnx.TypeProto]:
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    return {v.name: v.type for v in (*graph.input, *graph.value_info, *graph.output)}


# --8<-- [start:tensor_scatter]
def _lower_tensor_scatter(graph: ir.Graph, node: ir.Node) -> None:
    """present = ScatterElements(past, positions, update, axis), positions[b, .., s, ..] =
    (write_indices[b] + s) mod max_seq (circular) or write_indices[b] + s (linear)."""
    past, update = node.inputs[0], node.inputs[1]
    if not scatterable(past) or past.shape is None:
        return  # left as TensorScatter (see the module docstring)
    write_indices = node.inputs[2] if len(node.inputs) > 2 else None  # None: an omitted input
    rank = len(past.shape)
    axis = node.attributes.get_int("axis", -2) % rank
    circular = node.attributes.get_string("mode", "linear") == "circular"
    tape = ir.tape.Tape()

    def const(value: list[int]) -> ir.Value:
        return tape.op("Constant", [], attributes={"value": ir.tensor(value, dtype=ir.DataType.INT64)})

    def dim(value: ir.Value) -> ir.Value:  # value.shape[axis], as a 0-d int64
        return tape.op("Squeeze", [tape.op("Shape", [value], attributes={"start": axis, "end": axis + 1})])

    steps = tape.op("Range", [const(0), dim(update), const(1)])  # [seq]
    start = tape.op("Unsqueeze", [write_indices, const([1])]) if write_indices is not None else const([[0]])
    positions = tape.op("Add", [start, tape.op("Unsqueeze", [steps, const([0])])])  # [B or 1, seq]
    if circular:
        positions = tape.op("Mod", [positions, dim(past)])
    others = [d for d in range(1, rank) if d != axis]  # axis 0 is the batch, never the sequence
    if others:
        positions = tape.op("Unsqueeze", [positions, const(others)])
    indices = tape.op("Expand", [positions, tape.op("Shape", [update])])
    present = tape.op("ScatterElements", [past, indices, update], attributes={"axis": axis})
    # --8<-- [end:tensor_scatter]
    graph.insert_before(node, tape.nodes)
    old = node.outputs[0]
    present.type, present.shape = old.type, old.shape
    ir.convenience.replace_all_uses_with(old, present, replace_graph_outputs=True)
    graph.remove(node, safe=True)
    present.name = old.name


def _body_to_call(model: ir.Model, node: ir.Node, types: dict, opset: int, index: int) -> None:
    """Turn ``node`` into a call of a model-local function holding its body (inlined later)."""
    proto = ir.serde.serialize_node(node)
    empty = onnx.TypeProto().SerializeToString()
    input_types = [types[name].SerializeToString() if name else empty for name in proto.input]
    schema = defs.get_schema(node.op_type, opset)
    body = onnx.FunctionProto()
    body.ParseFromString(schema.get_context_dependent_function(proto.SerializeToString(), input_types))
    _readable_by_onnx_ir(body, len(node.outputs))
    function = ir.serde.deserialize_function(body)
    function.domain, function.name = _BODIES, f"{node.op_type}_{index}"
    function.attributes.clear()  # the body has the node's attribute values built in
    model.functions[function.identifier()] = function
    model.opset_imports[_BODIES] = 1
    node.domain, node.op_type = _BODIES, function.name
    node.attributes.clear()


def _readable_by_onnx_ir(body: onnx.FunctionProto, outputs: int) -> None:
    """onnx's body lists every output of the schema but computes only those the node asks
    for; onnx-ir reads a function only when each output has a producer. So, on the proto
    onnx returns, before onnx-ir reads it: as many outputs as the call has, and a Constant
    placeholder for each one the node skips (inlining then drops it)."""
    del body.output[outputs:]
    produced = {out for n in body.node for out in n.output}
    for name in body.output:
        if name not in produced:
            placeholder = ir.node("Constant", [], {"value_float": 0.0}, outputs=[ir.Value(name=name)])
            body.node.append(ir.serde.serialize_node(placeholder))
