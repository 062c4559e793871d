"""The MoE function body: onnxscript pieces plus a builder that assembles them per node.

Numeric attributes (``k``, ``activation_alpha``, ...) reach the pieces as attribute
references, so one body serves every value. Attributes that change the graph's
structure (``scoring``, ``activation``, ``gated``, ``gate_up_layout``,
``group_score``, ``apply_weight_on_input``, whether ``swiglu_limit`` is given) and
which optional inputs are present select the pieces: the body is built per
attribute set, like ONNX's context-dependent functions (Attention-23, for example).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx_ir as ir
import onnxscript
from onnxscript import OpBuilder, script, values
from onnxscript import opset21 as op

from generator.onnx_build import PROPOSAL_DOMAIN
from proposals.moe.schema import ATTRIBUTES, INPUT_NAMES, OPSET, SCHEMA, resolve

GENAI = values.Opset(PROPOSAL_DOMAIN, 1)
NEG_INF = float("-inf")
INT64 = onnx.TensorProto.INT64
TO_THE_END = np.array([np.iinfo(np.int64).max])  # Slice's end: the end of the axis
BODY_OPSETS = {"": OPSET, PROPOSAL_DOMAIN: 1}  # what every body function imports inside a model


# --8<-- [start:grouped_matmul]
@script(GENAI, default_opset=op)
def GroupedMatMul(input, weights, group_indices):
    """output[m, j, :] = input[m, :] @ weights[group_indices[m, j]]  (onnx/onnx PR #8193).

    input: [M, K], weights: [G, K, N], group_indices: int64 [M, k]  ->  output: [M, k, N].
    When no group repeats, gather each slot's weights and MatMul (the RFC's
    normative decomposition). When groups repeat, gather each distinct group's
    weights once and MatMul only the rows routed to it: the same result without
    copying a weight matrix more than once.
    """
    slots = op.Size(group_indices)
    # int64 for Unique: group_indices may be int32 (Tind), which onnxruntime 1.32's Unique lacks
    used, _, _, _ = op.Unique(op.Cast(op.Reshape(group_indices, [-1]), to=INT64))
    n_used = op.Size(used)
    if op.Equal(slots, n_used):
        output = op.Squeeze(op.MatMul(op.Unsqueeze(input, [1, 2]), op.Gather(weights, group_indices, axis=0)), [2])
    else:
        M = op.Shape(input, start=0, end=1)
        k = op.Shape(group_indices, start=1, end=2)
        N = op.Shape(weights, start=2, end=3)
        output = op.Expand(op.CastLike(0.0, input), op.Concat(M, k, N, axis=0))
        for i in range(n_used):
            g = op.Gather(used, op.Squeeze(i))  # i may arrive as [1] (ReferenceEvaluator)
            pos = op.Transpose(op.NonZero(op.Equal(group_indices, op.CastLike(g, group_indices))), perm=[1, 0])
            rows = op.Gather(input, op.Gather(pos, 0, axis=1))
            output = op.ScatterND(output, pos, op.MatMul(rows, op.Gather(weights, g)))
    return output


@script(GENAI, default_opset=op)
def GroupedMatMulBias(input, weights, group_indices, bias):
    """GroupedMatMul with the RFC's optional bias [G, N]: output[m, j] += bias[group_indices[m, j]].

    The RFC's function is context-dependent (the bias line exists only when input 3 is
    given); this is its with-bias body, shipped under the name GroupedMatMul.
    """
    slots = op.Size(group_indices)
    # int64 for Unique: group_indices may be int32 (Tind), which onnxruntime 1.32's Unique lacks
    used, _, _, _ = op.Unique(op.Cast(op.Reshape(group_indices, [-1]), to=INT64))
    n_used = op.Size(used)
    if op.Equal(slots, n_used):
        product = op.Squeeze(op.MatMul(op.Unsqueeze(input, [1, 2]), op.Gather(weights, group_indices, axis=0)), [2])
        output = op.Add(product, op.Gather(bias, group_indices, axis=0))
    else:
        M = op.Shape(input, start=0, end=1)
        k = op.Shape(group_indices, start=1, end=2)
        N = op.Shape(weights, start=2, end=3)
        output = op.Expand(op.CastLike(0.0, input), op.Concat(M, k, N, axis=0))
        for i in range(n_used):
            g = op.Gather(used, op.Squeeze(i))
            pos = op.Transpose(op.NonZero(op.Equal(group_indices, op.CastLike(g, group_indices))), perm=[1, 0])
            rows = op.Gather(input, op.Gather(pos, 0, axis=1))
            group_out = op.Add(op.MatMul(rows, op.Gather(weights, g)), op.Gather(bias, g))
            output = op.ScatterND(output, pos, group_out)
    return output


# --8<-- [end:grouped_matmul]


# --8<-- [start:routing]
@script(GENAI, default_opset=op)
def MoESelect(choice, scores, k: int):
    """The k best experts by ``choice`` and their weights taken from ``scores``."""
    _, idx = op.TopK(choice, op.Reshape(k, [1]), axis=-1)
    weights = op.GatherElements(scores, idx, axis=1)
    return idx, weights


@script(GENAI, default_opset=op)
def MoEKeepGroups(choice, group_scores, topk_group: int):
    """choice with experts outside the topk_group best groups set to -inf.

    choice: [T, n_group, E / n_group], group_scores: [T, n_group] -> [T, E].
    """
    _, best = op.TopK(group_scores, op.Reshape(topk_group, [1]), axis=-1)
    zeros = op.Expand(op.CastLike(0.0, group_scores), op.Shape(group_scores))
    ones = op.Expand(op.CastLike(1.0, group_scores), op.Shape(best))
    keep = op.Cast(op.ScatterElements(zeros, best, ones, axis=-1), to=onnx.TensorProto.BOOL)
    masked = op.Where(op.Unsqueeze(keep, [-1]), choice, op.CastLike(NEG_INF, choice))
    return op.Reshape(masked, op.Concat(op.Shape(choice, start=0, end=1), [-1], axis=0))


@script(GENAI, default_opset=op)
def MoEGroupLimitTop2Sum(choice, n_group: int, topk_group: int):
    """Group-limited selection scores; a group scores the sum of its two best (DeepSeek-V3)."""
    grouped = op.Reshape(choice, op.Concat([0], op.Reshape(n_group, [1]), [-1], axis=0))
    top2, _ = op.TopK(grouped, [2], axis=-1)
    return MoEKeepGroups(grouped, op.ReduceSum(top2, [-1], keepdims=0), topk_group=topk_group)


@script(GENAI, default_opset=op)
def MoEGroupLimitMax(choice, n_group: int, topk_group: int):
    """Group-limited selection scores; a group scores its best expert (DeepSeek-V2)."""
    grouped = op.Reshape(choice, op.Concat([0], op.Reshape(n_group, [1]), [-1], axis=0))
    return MoEKeepGroups(grouped, op.ReduceMax(grouped, [-1], keepdims=0), topk_group=topk_group)


# --8<-- [end:routing]


# --8<-- [start:activation]
@script(GENAI, default_opset=op)
def MoESilu(x, alpha: float):
    """x * sigmoid(alpha * x), spelled with Sigmoid (ORT 1.32 CPU has no Swish-24 kernel)."""
    return op.Mul(x, op.Sigmoid(op.Mul(op.CastLike(alpha, x), x)))


@script(GENAI, default_opset=op)
def MoEGelu(x):
    """0.5 * x * (1 + erf(x / sqrt(2)))."""
    return op.Mul(
        op.Mul(op.CastLike(0.5, x), x),
        op.Add(op.CastLike(1.0, x), op.Erf(op.Mul(x, op.CastLike(0.7071067811865476, x)))),
    )


@script(GENAI, default_opset=op)
def MoEGeluTanh(x):
    """0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))."""
    inner = op.Mul(
        op.CastLike(0.7978845608028654, x), op.Add(x, op.Mul(op.CastLike(0.044715, x), op.Mul(x, op.Mul(x, x))))
    )
    return op.Mul(op.Mul(op.CastLike(0.5, x), x), op.Add(op.CastLike(1.0, x), op.Tanh(inner)))


@script(GENAI, default_opset=op)
def MoESplitConcatenated(h):
    """gate = first half of the last axis, up = second half."""
    gate, up = op.Split(h, axis=-1, num_outputs=2)
    return gate, up


@script(GENAI, default_opset=op)
def MoESplitInterleaved(h):
    """gate = even columns, up = odd columns (GPT-OSS, ORT CPU swiglu_fusion=1)."""
    gate = op.Slice(h, [0], TO_THE_END, [-1], [2])
    up = op.Slice(h, [1], TO_THE_END, [-1], [2])
    return gate, up


@script(GENAI, default_opset=op)
def MoEClampGateUp(gate, up, limit: float):
    """gate = min(gate, limit), up = clip(up, -limit, limit) (GPT-OSS)."""
    lim = op.CastLike(limit, gate)
    return op.Min(gate, lim), op.Clip(up, op.Neg(lim), lim)


# --8<-- [end:activation]


PIECES = {
    f.name: f
    for f in (
        GroupedMatMul,
        GroupedMatMulBias,
        MoESelect,
        MoEKeepGroups,
        MoEGroupLimitTop2Sum,
        MoEGroupLimitMax,
        MoESilu,
        MoEGelu,
        MoEGeluTanh,
        MoESplitConcatenated,
        MoESplitInterleaved,
        MoEClampGateUp,
    )
}
_DEPENDS = {"MoEGroupLimitTop2Sum": ("MoEKeepGroups",), "MoEGroupLimitMax": ("MoEKeepGroups",)}
_CALLEES = {"MoEKeepGroups"}  # pieces that other pieces call


_KINDS = {"int": ir.AttributeType.INT, "float": ir.AttributeType.FLOAT, "string": ir.AttributeType.STRING}


def ref(name: str, attribute: str) -> ir.RefAttr:
    """A body node's attribute ``name`` that takes the MoE node's attribute ``attribute``."""
    spec = next(a for a in ATTRIBUTES if a.name == attribute)
    return ir.RefAttr(name, attribute, _KINDS[spec.type])


def _call(op: OpBuilder, piece: str, *inputs: ir.Value, outputs: Sequence[str], **attrs: object):
    """A node calling one of the body's pieces (the proposal domain). Both GroupedMatMul
    bodies are called by the op's own name."""
    op_type = "GroupedMatMul" if piece.startswith("GroupedMatMul") else piece
    return getattr(op, op_type)(*inputs, _domain=PROPOSAL_DOMAIN, _outputs=list(outputs), **attrs)


# --8<-- [start:builder]
def _activation(op: OpBuilder, h: ir.Value, a: Mapping[str, object], name: str) -> ir.Value:
    """act of the spec applied to fc1's output ``h``."""
    piece = {"silu": "MoESilu", "gelu": "MoEGelu", "gelu_tanh": "MoEGeluTanh", "relu": None}[a["activation"]]
    alpha = {"alpha": ref("alpha", "activation_alpha")} if piece == "MoESilu" else {}

    def act(x: ir.Value, out: str) -> ir.Value:
        return op.Relu(x, _outputs=[out]) if piece is None else _call(op, piece, x, outputs=[out], **alpha)

    if not a["gated"]:
        return act(h, name)
    split = "MoESplitConcatenated" if a["gate_up_layout"] == "concatenated" else "MoESplitInterleaved"
    gate, up = _call(op, split, h, outputs=[f"{name}_gate", f"{name}_up"])
    if "swiglu_limit" in a:
        limit = ref("limit", "swiglu_limit")
        gate, up = _call(
            op, "MoEClampGateUp", gate, up, outputs=[f"{name}_gate_clamped", f"{name}_up_clamped"], limit=limit
        )
    beta = op.Constant(value_float=ref("value_float", "activation_beta"), _outputs=[f"{name}_beta"])
    shifted = op.Add(up, op.CastLike(beta, up), _outputs=[f"{name}_up_shifted"])
    return op.Mul(act(gate, f"{name}_f"), shifted, _outputs=[name])


def _routing(op: OpBuilder, x: ir.Value, w: Mapping[str, ir.Value], a: Mapping[str, object]):
    """Selected expert ids [T, k] and routing weights [T, k]."""
    logits = op.MatMul(x, w["router_weight"], _outputs=["logits"])
    if "router_bias" in w:
        logits = op.Add(logits, w["router_bias"], _outputs=["biased_logits"])
    if a["scoring"] == "softmax":
        scores = op.Softmax(logits, axis=-1, _outputs=["scores"])
    else:
        scores = op.Sigmoid(logits, _outputs=["scores"])
    choice = scores
    if "selection_bias" in w:
        choice = op.Add(scores, w["selection_bias"], _outputs=["choice"])
    if a["n_group"] > 1:
        limit = "MoEGroupLimitTop2Sum" if a["group_score"] == "top2_sum" else "MoEGroupLimitMax"
        topk_group = ref("topk_group", "topk_group" if "topk_group" in a else "n_group")
        choice = _call(
            op, limit, choice, outputs=["group_choice"], n_group=ref("n_group", "n_group"), topk_group=topk_group
        )
    idx, weights = _call(op, "MoESelect", choice, scores, outputs=["expert_ids", "selected_scores"], k=ref("k", "k"))
    if a["normalize_routing_weights"]:
        total = op.ReduceSum(weights, op.Constant(value_ints=[-1]), keepdims=1, _outputs=["weight_sum"])
        weights = op.Div(weights, total, _outputs=["normalized_weights"])
    scale = op.Constant(value_float=ref("value_float", "routed_scaling_factor"), _outputs=["scale"])
    return idx, op.Mul(weights, op.CastLike(scale, weights), _outputs=["routing_weights"])


def _experts(op: OpBuilder, x: ir.Value, idx: ir.Value, w: Mapping[str, ir.Value], a: Mapping[str, object]):
    """Routed part, [T, H]: GroupedMatMul -> act -> GroupedMatMul -> weighted sum over slots.

    The expert biases are GroupedMatMul's optional bias input. A model carries one
    GroupedMatMul body, so when only one of fc1_bias / fc2_bias is given the other
    call gets a zero bias (adding 0 changes no value)."""
    routing = w["routing_weights"]
    slot_ids = op.Reshape(idx, op.Constant(value_ints=[-1, 1]), _outputs=["slot_expert_ids"])
    minus_one = op.Constant(value_ints=[-1])
    h_dim = op.Shape(x, start=-1, _outputs=["h_dim"])
    w_slots = op.Unsqueeze(routing, op.Constant(value_ints=[2]), _outputs=["w_slots"])  # [T, k, 1]
    biased = bool({"fc1_bias", "fc2_bias"} & set(w))
    fc1_bias, fc2_bias = ([_bias(op, w, n, weight)] if biased else [] for n, weight in _BIASED)
    gmm = "GroupedMatMulBias" if biased else "GroupedMatMul"
    if a["apply_weight_on_input"]:
        x_slots = op.Unsqueeze(x, op.Constant(value_ints=[1]), _outputs=["x_slots"])
        scaled = op.Mul(x_slots, w_slots, _outputs=["scaled_x"])
        rows_shape = op.Concat(minus_one, h_dim, axis=0, _outputs=["rows_shape"])
        rows = op.Reshape(scaled, rows_shape, _outputs=["slot_inputs"])  # one row per (token, slot)
        h1 = _call(op, gmm, rows, w["fc1_weight"], slot_ids, *fc1_bias, outputs=["h1"])
    else:
        h1 = _call(op, gmm, x, w["fc1_weight"], idx, *fc1_bias, outputs=["h1"])
    act = _activation(op, h1, a, "act")
    act_width = op.Shape(act, start=-1, _outputs=["act_width"])
    act_rows_shape = op.Concat(minus_one, act_width, axis=0, _outputs=["act_rows_shape"])
    act_rows = op.Reshape(act, act_rows_shape, _outputs=["act_rows"])
    h2 = _call(op, gmm, act_rows, w["fc2_weight"], slot_ids, *fc2_bias, outputs=["h2"])
    slots_shape = op.Concat(op.Shape(routing, _outputs=["tk"]), h_dim, axis=0, _outputs=["slots_shape"])
    per_slot = op.Reshape(h2, slots_shape, _outputs=["expert_out"])  # [T, k, H]
    if not a["apply_weight_on_input"]:
        per_slot = op.Mul(per_slot, w_slots, _outputs=["weighted_out"])
    return op.ReduceSum(per_slot, op.Constant(value_ints=[1]), keepdims=0, _outputs=["routed"])


_BIASED = (("fc1_bias", "fc1_weight"), ("fc2_bias", "fc2_weight"))


def _bias(op: OpBuilder, w: Mapping[str, ir.Value], name: str, weight: str) -> ir.Value:
    """The bias input ``name``, or zeros [G, N] shaped like ``weight``'s groups and columns."""
    if name in w:
        return w[name]
    groups = op.Shape(w[weight], start=0, end=1, _outputs=[f"{name}_g"])
    columns = op.Shape(w[weight], start=2, _outputs=[f"{name}_n"])
    shape = op.Concat(groups, columns, axis=0, _outputs=[f"{name}_shape"])
    zeros = op.ConstantOfShape(shape, _outputs=[f"{name}_zeros_f32"])
    return op.CastLike(zeros, w[weight], _outputs=[f"{name}_zeros"])


def _shared(op: OpBuilder, x: ir.Value, w: Mapping[str, ir.Value], a: Mapping[str, object]) -> ir.Value:
    """The shared expert, [T, H]."""
    h1 = op.MatMul(x, w["shared_fc1_weight"], _outputs=["shared_h1"])
    out = op.MatMul(_activation(op, h1, a, "shared_act"), w["shared_fc2_weight"], _outputs=["shared_out"])
    if "shared_gate_weight" in w:
        logit = op.MatMul(x, w["shared_gate_weight"], _outputs=["shared_gate_logit"])
        out = op.Mul(out, op.Sigmoid(logit, _outputs=["shared_gate"]), _outputs=["gated_shared_out"])
    return out


def _moe(op: OpBuilder, w: dict[str, ir.Value], a: Mapping[str, object]) -> ir.Value:
    """The whole body: tokens -> routing -> experts (+ shared expert) -> X's shape."""
    x = op.Flatten(w["X"], axis=-1, _outputs=["tokens"])
    idx, w["routing_weights"] = _routing(op, x, w, a)
    y = _experts(op, x, idx, w, a)
    if "shared_fc1_weight" in w:
        y = op.Add(y, _shared(op, x, w, a), _outputs=["with_shared"])
    return op.Reshape(y, op.Shape(w["X"], _outputs=["x_shape"]), _outputs=["Y"])


def build_function(attrs: Mapping[str, object], present: Sequence[str]) -> list[onnx.FunctionProto]:
    """The FunctionProtos of the pieces this attribute set calls (callees first, as
    ReferenceEvaluator needs), then the MoE FunctionProto for these present inputs."""
    a = resolve(attrs)
    _check_present(set(present))
    formals = [ir.Value(name=name) for name in INPUT_NAMES]  # every formal input; the body reads the present
    body = onnxscript.build_function(
        lambda op, *values: _moe(op, {v.name: v for v in values if v.name in present}, a),
        formals,
        domain=PROPOSAL_DOMAIN,
        name=SCHEMA.name,
        attributes=[ir.Attr(s.name, _KINDS[s.type], None) for s in ATTRIBUTES if s.name in a],
        opset_imports={"": OPSET, PROPOSAL_DOMAIN: 1},
    )
    body.outputs[0].name = "Y"  # the schema's output name (the builder prefixes value names)
    body.doc_string = "MoE function body built for one attribute set (see proposals/moe)."
    moe = ir.serde.serialize_function(body)
    del moe.value_info[:]  # the builder's inferred types: the bytes carry the body only
    for node in moe.node:
        del node.metadata_props[:]  # and its scope notes
    used = {n.op_type for n in moe.node if n.domain == PROPOSAL_DOMAIN}
    if any(n.op_type == "GroupedMatMul" and len(n.input) > 3 for n in moe.node):
        used = used - {"GroupedMatMul"} | {"GroupedMatMulBias"}
    used |= {callee for name in used for callee in _DEPENDS.get(name, ())}
    order = sorted(used, key=lambda name: (name not in _CALLEES, name))
    pieces = [piece_proto(name, BODY_OPSETS) for name in order]
    return [*pieces, moe]


# --8<-- [end:builder]


def piece_proto(name: str, opsets: Mapping[str, int] | None = None) -> onnx.FunctionProto:
    """A piece's FunctionProto, with an explicit true condition on each Loop, and the
    given opset imports (``BODY_OPSETS`` inside a model) instead of onnxscript's.

    onnxscript leaves a ``for`` loop's condition input empty, which the spec allows,
    but onnx 1.23's ReferenceEvaluator then runs no iteration at all.
    """
    function = ir.serde.deserialize_function(PIECES[name].to_function_proto())
    if opsets is not None:
        function.opset_imports.clear()
        function.opset_imports.update(opsets)
    if name == "GroupedMatMulBias":  # the RFC's with-bias body carries the op's own name
        function.name = "GroupedMatMul"
    loops = [n for n in ir.traversal.RecursiveGraphIterator(function) if n.op_type == "Loop" and n.inputs[1] is None]
    for loop in loops:
        tape = ir.tape.Tape()
        forever = tape.op(
            "Constant", [], {"value": ir.tensor(True)}, name="loop_forever", output=ir.val("loop_forever")
        )
        function.insert_before(next(iter(function)), tape.nodes)
        loop.replace_input_with(1, forever)
    return ir.serde.serialize_function(function)


def _check_present(present: set[str]) -> None:
    from generator.errors import UsageError

    unknown = sorted(present - set(INPUT_NAMES))
    if unknown:
        raise UsageError(f"unknown MoE input(s) {unknown}; valid: {list(INPUT_NAMES)}")
    required = {f.name for f in SCHEMA.inputs if not f.optional}
    missing = sorted(required - present)
    if missing:
        raise UsageError(f"MoE needs input(s) {missing}")
    if ("shared_fc1_weight" in present) != ("shared_fc2_weight" in present):
        raise UsageError("MoE shared_fc1_weight and shared_fc2_weight come together")
    if "shared_gate_weight" in present and "shared_fc1_weight" not in present:
        raise UsageError("MoE shared_gate_weight needs shared_fc1_weight and shared_fc2_weight")
