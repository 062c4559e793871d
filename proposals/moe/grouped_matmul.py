"""GroupedMatMul exactly as the RFC (onnx/onnx PR #8193) defines it, plus its two open points
as a runnable variant.

``GroupedMatMul(input [M, K], weights [G, K, N], group_indices int64 [M, k], bias? [G, N])
-> [M, k, N]``, no attributes. The schema is plain data (rendered on the spec page), the
body is :func:`proposals.moe.body.GroupedMatMul` (or its with-bias form), and the numpy
reference below is written from the RFC's text, one row and one slot at a time.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript import opset21 as op
from onnxscript import script

from generator.onnx_build import PROPOSAL_DOMAIN, builder_model, graph_builder
from generator.opspec import OpSchema, Parameter, TypeConstraint, render_spec
from generator.registry import select
from proposals.moe.body import BODY_OPSETS, GENAI, GroupedMatMul, piece_proto
from proposals.moe.schema import OPSET

# the types of ai.onnx GroupedMatMul-29 (onnx-weekly; upstream/grouped_matmul.py compares them)
FLOATS = ("tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)")
INDICES = ("tensor(int32)", "tensor(int64)")
ONNX_OPSET = 29  # the ai.onnx opset that has GroupedMatMul (onnx 1.24, planned 2026-12-14)

# --8<-- [start:doc]
DOC = """\
Multiplies each of `M` token rows by `k` of `G` stacked weight matrices, chosen per row:
`output[m, j, :] = input[m, :] @ weights[group_indices[m, j]] (+ bias[group_indices[m, j]])`.
`G = weights.shape[0]`, `k = group_indices.shape[1]`. Indices lie in `[0, G)` (as in
ai.onnx GroupedMatMul-29; a value outside is invalid input). `k = 1` is the single-expert
case (output `[M, 1, N]`); `M = 0` or `k = 0` gives an empty output; a group no row
selects is never read.

The result is that of the RFC's decomposition, which is normative for the result, not
for the strategy: `Gather(weights, group_indices)` gives `[M, k, K, N]`, the rows are
expanded to `[M, k, 1, K]`, and `MatMul` gives `[M, k, 1, N]`, squeezed to `[M, k, N]`;
with `bias`, `Gather(bias, group_indices)` is added. The function is context-dependent:
the bias line exists only when input 3 is given.

No activation and no combine are fused: a weighted sum over the `k` slots is a `Mul` and
a `ReduceSum` in the surrounding graph.
"""
# --8<-- [end:doc]

SCHEMA = OpSchema(
    name="GroupedMatMul",
    domain=PROPOSAL_DOMAIN,
    since_version=1,
    summary="Per-row choice of k of G stacked matrices (onnx/onnx PR #8193).",
    doc=DOC,
    inputs=(
        Parameter("input", "T", "[M, K]", "Token rows; K is the contraction axis."),
        Parameter("weights", "T", "[G, K, N]", "G stacked weight matrices (model parameters)."),
        Parameter("group_indices", "Tind", "[M, k]", "The k groups of each row, in [0, G)."),
        Parameter("bias", "T", "[G, N]", "Per-group bias, added to each selected result.", optional=True),
    ),
    outputs=(Parameter("output", "T", "[M, k, N]", "output[m, j] = input[m] @ weights[group_indices[m, j]]."),),
    type_constraints=(
        TypeConstraint("T", FLOATS, "Floating-point tensors."),
        TypeConstraint("Tind", INDICES, "Group indices."),
    ),
)

ND_DOC = """\
A variant answering the RFC's two open questions at once; it is not part of the RFC.
`input` may carry batch axes, `[B..., K]`, and `group_indices` is either `[B..., k]` or,
for `k = 1`, `[B...]` (one index per row, no `k` axis). The output's shape is
`group_indices.shape + [N]`, as for `Gather`: `[B..., k, N]`, or `[B..., N]`. The body
flattens the batch axes, calls `GroupedMatMul`, and restores them, so the variant adds
only `Reshape`s (metadata on most backends) around the RFC's op.
"""

ND_SCHEMA = OpSchema(
    name="GroupedMatMulND",
    domain=PROPOSAL_DOMAIN,
    since_version=1,
    summary="GroupedMatMul with batch axes and a 1-D group_indices for k = 1 (the RFC's open points).",
    doc=ND_DOC,
    inputs=(
        Parameter("input", "T", "[B..., K]", "Token rows with any number of batch axes."),
        Parameter("weights", "T", "[G, K, N]", "G stacked weight matrices."),
        Parameter("group_indices", "Tind", "[B..., k] or [B...]", "Groups per row; no k axis means k = 1."),
        Parameter("bias", "T", "[G, N]", "Per-group bias.", optional=True),
    ),
    outputs=(Parameter("output", "T", "group_indices.shape + [N]", "The RFC's result, batch axes restored."),),
    type_constraints=(
        TypeConstraint("T", FLOATS, "Floating-point tensors."),
        TypeConstraint("Tind", INDICES, "Group indices."),
    ),
)


# --8<-- [start:reference]
def reference(
    input: np.ndarray, weights: np.ndarray, group_indices: np.ndarray, bias: np.ndarray | None = None
) -> np.ndarray:
    """The RFC's semantics in float64, one row and one slot at a time."""
    m_rows, k = group_indices.shape
    groups, _, n = weights.shape
    out = np.zeros((m_rows, k, n))
    for m in range(m_rows):
        for j in range(k):
            g = int(group_indices[m, j])
            if not 0 <= g < groups:
                raise ValueError(f"group index {g} outside [0, {groups})")
            out[m, j] = input[m].astype(np.float64) @ weights[g].astype(np.float64)
            if bias is not None:
                out[m, j] += bias[g]
    return out


def reference_nd(input, weights, group_indices, bias=None) -> np.ndarray:
    """The variant: flatten the batch axes, apply the RFC op, restore them."""
    rows = input.reshape(-1, input.shape[-1])
    flat = reference(rows, weights, group_indices.reshape(rows.shape[0], -1), bias)
    return flat.reshape(*group_indices.shape, weights.shape[-1])


# --8<-- [end:reference]


# --8<-- [start:nd_body]
@script(GENAI, default_opset=op)
def GroupedMatMulND(input, weights, group_indices):
    """input [B..., K], group_indices [B..., k] or [B...] -> group_indices.shape + [N]."""
    rows = op.Flatten(input, axis=-1)  # [M, K]
    per_row = op.Reshape(group_indices, op.Concat(op.Shape(rows, start=0, end=1), [-1], axis=0))  # [M, k]
    flat = GroupedMatMul(rows, weights, per_row)
    return op.Reshape(flat, op.Concat(op.Shape(group_indices), op.Shape(weights, start=2), axis=0))


# --8<-- [end:nd_body]


def functions(*, bias: bool, nd: bool = False) -> list[onnx.FunctionProto]:
    """The model-local functions a GroupedMatMul (or GroupedMatMulND) node needs: the
    context-dependent body for this bias presence, then the variant's wrapper."""
    core = piece_proto("GroupedMatMulBias" if bias else "GroupedMatMul", BODY_OPSETS)
    if not nd:
        return [core]
    wrapper = ir.serde.deserialize_function(GroupedMatMulND.to_function_proto())
    if bias:  # the wrapper forwards the optional bias: one more formal input and call input
        forwarded = ir.Value(name="bias")
        wrapper.inputs.append(forwarded)
        call = next(n for n in wrapper if n.op_type == "GroupedMatMul")
        call.resize_inputs(4)
        call.replace_input_with(3, forwarded)
    wrapper.opset_imports.clear()
    wrapper.opset_imports.update(BODY_OPSETS)
    return [core, ir.serde.serialize_function(wrapper)]


def grouped_matmul_model(
    input: np.ndarray,
    weights: np.ndarray,
    group_indices: np.ndarray,
    bias: np.ndarray | None = None,
    *,
    nd: bool = False,
) -> onnx.ModelProto:
    """One GroupedMatMul (or GroupedMatMulND) node; every tensor is a graph input, so a
    runtime sees the indices as data, as a router would produce them."""
    arrays = {"input": input, "weights": weights, "group_indices": group_indices}
    if bias is not None:
        arrays["bias"] = bias
    name = ND_SCHEMA.name if nd else SCHEMA.name
    b = graph_builder(name, {"": OPSET, PROPOSAL_DOMAIN: 1})
    inputs = [b.input(n, ir.DataType.from_numpy(a.dtype), list(a.shape)) for n, a in arrays.items()]
    output = getattr(b.op, name)(*inputs, _domain=PROPOSAL_DOMAIN)
    # the variant's output is group_indices.shape + [N]; the RFC op's is [M, k, N], the same here
    output.type = ir.TensorType(ir.DataType.from_numpy(input.dtype))
    output.shape = ir.Shape([*group_indices.shape, weights.shape[-1]])
    b.add_output(output, "output")
    return builder_model(b, functions(bias=bias is not None, nd=nd))


EXAMPLES = ("grouped_matmul_rfc_top2_bias", "grouped_matmul_repeated_groups")
ND_EXAMPLES = ("grouped_matmul_nd_1d_indices", "grouped_matmul_nd_batch")


def spec_markdown() -> str:
    """The spec page's generated part: both schemas with their bodies and zoo examples."""
    specs = {s.name: s for s in select(["moe"])}
    core = render_spec(
        SCHEMA, functions(bias=True)[0], [specs[n] for n in EXAMPLES], catalogue_link="../../catalogue.md"
    )
    wrapper = functions(bias=False, nd=True)[1]
    nd = render_spec(ND_SCHEMA, wrapper, [specs[n] for n in ND_EXAMPLES], catalogue_link="../../catalogue.md")
    return core + "\n\n" + nd


# The gather-per-slot form exporters emit: the RFC's decomposition alone, without the
# per-group Loop the body switches to for large M.
@script(GENAI, default_opset=op)
def GatherPerSlot(input, weights, group_indices):
    """The RFC's decomposition alone: gather every slot's weights, then MatMul."""
    return op.Squeeze(op.MatMul(op.Unsqueeze(input, [1, 2]), op.Gather(weights, group_indices, axis=0)), [2])


@script(GENAI, default_opset=op)
def GatherPerSlotBias(input, weights, group_indices, bias):
    """The RFC's decomposition with its bias line."""
    product = op.Squeeze(op.MatMul(op.Unsqueeze(input, [1, 2]), op.Gather(weights, group_indices, axis=0)), [2])
    return op.Add(product, op.Gather(bias, group_indices, axis=0))


def with_gather_per_slot_body(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with GroupedMatMul's body replaced by the RFC's gather-per-slot decomposition."""
    out = ir.serde.deserialize_model(model)
    for key, body in out.functions.items():
        if body.name == "GroupedMatMul":
            form = GatherPerSlotBias if len(body.inputs) > 3 else GatherPerSlot
            replacement = ir.serde.deserialize_function(form.to_function_proto())
            replacement.name = "GroupedMatMul"
            replacement.opset_imports.clear()
            replacement.opset_imports.update(body.opset_imports)
            out.functions[key] = replacement
    return ir.serde.serialize_model(out)


# --8<-- [start:on_onnx_op]
def on_onnx_op(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same model on ai.onnx GroupedMatMul-29: every proposal-domain GroupedMatMul call, in
    the graph and in model-local functions (the MoE body, the ND wrapper), becomes the standard
    op, the model-local GroupedMatMul body is dropped, and ai.onnx is imported at opset 29."""
    out = ir.serde.deserialize_model(model)
    for key in [k for k, f in out.functions.items() if (f.domain, f.name) == (PROPOSAL_DOMAIN, SCHEMA.name)]:
        out.functions.pop(key)
    owners = [(out, out.graph), *((f, f) for f in out.functions.values())]
    for _, graph in owners:
        for node in ir.traversal.RecursiveGraphIterator(graph):
            if (node.domain, node.op_type) == (PROPOSAL_DOMAIN, SCHEMA.name):
                node.domain = ""
    for owner, graph in owners:
        owner.opset_imports[""] = ONNX_OPSET
        if not any(n.domain == PROPOSAL_DOMAIN for n in ir.traversal.RecursiveGraphIterator(graph)):
            owner.opset_imports.pop(PROPOSAL_DOMAIN, None)
    return ir.serde.serialize_model(out)


# --8<-- [end:on_onnx_op]
