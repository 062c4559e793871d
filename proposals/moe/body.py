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

import onnx
from onnx import helper
from onnxscript import opset21 as op
from onnxscript import script, values

from generator.onnx_build import PROPOSAL_DOMAIN
from proposals.moe.schema import ATTRIBUTES, INPUT_NAMES, OPSET, SCHEMA, resolve

GENAI = values.Opset(PROPOSAL_DOMAIN, 1)
NEG_INF = float("-inf")


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
    used, _, _, _ = op.Unique(op.Reshape(group_indices, [-1]))
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
            pos = op.Transpose(op.NonZero(op.Equal(group_indices, g)), perm=[1, 0])
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
    used, _, _, _ = op.Unique(op.Reshape(group_indices, [-1]))
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
            pos = op.Transpose(op.NonZero(op.Equal(group_indices, g)), perm=[1, 0])
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
    gate = op.Slice(h, [0], [9223372036854775807], [-1], [2])
    up = op.Slice(h, [1], [9223372036854775807], [-1], [2])
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


class _Body:
    """Collects the nodes of one MoE body; names values after what they hold."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.used: set[str] = set()
        self.present: set[str] = set()
        self.gmm_bias = False  # whether GroupedMatMul is called with its bias input

    def __call__(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str] | str,
        refs: Mapping[str, str] = (),
        **attrs: object,
    ) -> str | list[str]:
        outs = [outputs] if isinstance(outputs, str) else list(outputs)
        domain = PROPOSAL_DOMAIN if op_type in PIECES else ""
        node = helper.make_node(op_type, list(inputs), outs, domain=domain, **attrs)
        for name, ref in dict(refs).items():
            node.attribute.append(_ref(name, ref))
        self.nodes.append(node)
        if op_type in PIECES:
            self.used.update((op_type, *_DEPENDS.get(op_type, ())))
        return outputs

    def const(self, name: str, ints: Sequence[int]) -> str:
        return self("Constant", [], name, value_ints=list(ints))


def _ref(name: str, ref: str) -> onnx.AttributeProto:
    """An attribute of a body node that takes the MoE node's attribute ``ref``."""
    spec = next(a for a in ATTRIBUTES if a.name == ref)
    kind = {"int": onnx.AttributeProto.INT, "float": onnx.AttributeProto.FLOAT, "string": onnx.AttributeProto.STRING}[
        spec.type
    ]
    return onnx.AttributeProto(name=name, ref_attr_name=ref, type=kind)


# --8<-- [start:builder]
def _activation(b: _Body, h: str, a: Mapping[str, object], out: str) -> str:
    """act of the spec applied to fc1's output ``h``."""
    f = {"silu": "MoESilu", "gelu": "MoEGelu", "gelu_tanh": "MoEGeluTanh", "relu": "Relu"}[a["activation"]]
    refs = {"alpha": "activation_alpha"} if f == "MoESilu" else {}
    if not a["gated"]:
        return b(f, [h], out, refs)
    split = "MoESplitConcatenated" if a["gate_up_layout"] == "concatenated" else "MoESplitInterleaved"
    gate, up = b(split, [h], [f"{out}_gate", f"{out}_up"])
    if "swiglu_limit" in a:
        gate, up = b("MoEClampGateUp", [gate, up], [f"{gate}_clamped", f"{up}_clamped"], {"limit": "swiglu_limit"})
    b("Constant", [], f"{out}_beta", refs={"value_float": "activation_beta"})
    shifted = b("Add", [up, b("CastLike", [f"{out}_beta", up], f"{out}_beta_t")], f"{up}_shifted")
    return b("Mul", [b(f, [gate], f"{out}_f", refs), shifted], out)


def _routing(b: _Body, x: str, a: Mapping[str, object], present: set[str]) -> tuple[str, str]:
    """Selected expert ids [T, k] and routing weights [T, k]."""
    logits = b("MatMul", [x, "router_weight"], "logits")
    if "router_bias" in present:
        logits = b("Add", [logits, "router_bias"], "biased_logits")
    if a["scoring"] == "softmax":
        scores = b("Softmax", [logits], "scores", axis=-1)
    else:
        scores = b("Sigmoid", [logits], "scores")
    choice = scores
    if "selection_bias" in present:
        choice = b("Add", [scores, "selection_bias"], "choice")
    if a["n_group"] > 1:
        limit = "MoEGroupLimitTop2Sum" if a["group_score"] == "top2_sum" else "MoEGroupLimitMax"
        topk_group = "topk_group" if "topk_group" in a else "n_group"
        choice = b(limit, [choice], "group_choice", {"n_group": "n_group", "topk_group": topk_group})
    idx, weights = b("MoESelect", [choice, scores], ["expert_ids", "selected_scores"], {"k": "k"})
    if a["normalize_routing_weights"]:
        total = b("ReduceSum", [weights, b.const("last_axis", [-1])], "weight_sum", keepdims=1)
        weights = b("Div", [weights, total], "normalized_weights")
    b("Constant", [], "scale", refs={"value_float": "routed_scaling_factor"})
    scale = b("CastLike", ["scale", weights], "scale_t")
    return idx, b("Mul", [weights, scale], "routing_weights")


def _experts(b: _Body, x: str, idx: str, w: str, a: Mapping[str, object], present: set[str]) -> str:
    """Routed part, [T, H]: GroupedMatMul -> act -> GroupedMatMul -> weighted sum over slots.

    The expert biases are GroupedMatMul's optional bias input. A model carries one
    GroupedMatMul body, so when only one of fc1_bias / fc2_bias is given the other
    call gets a zero bias (adding 0 changes no value)."""
    slot_ids = b("Reshape", [idx, b.const("column", [-1, 1])], "slot_expert_ids")
    minus_one = b.const("minus_one", [-1])
    h_dim = b("Shape", [x], "h_dim", start=-1)
    w_slots = b("Unsqueeze", [w, b.const("axis2", [2])], "w_slots")  # [T, k, 1]
    biases = {"fc1_bias", "fc2_bias"} & present
    b.gmm_bias = bool(biases)
    fc1_bias, fc2_bias = (_bias(b, name, weight) if biases else None for name, weight in _BIASED)
    if a["apply_weight_on_input"]:
        scaled = b("Mul", [b("Unsqueeze", [x, b.const("axis1", [1])], "x_slots"), w_slots], "scaled_x")
        rows_shape = b("Concat", [minus_one, h_dim], "rows_shape", axis=0)
        rows = b("Reshape", [scaled, rows_shape], "slot_inputs")  # one row per (token, slot)
        h1 = b("GroupedMatMul", [rows, "fc1_weight", slot_ids, *filter(None, [fc1_bias])], "h1")
    else:
        h1 = b("GroupedMatMul", [x, "fc1_weight", idx, *filter(None, [fc1_bias])], "h1")
    act = _activation(b, h1, a, "act")
    act_width = b("Shape", [act], "act_width", start=-1)
    act_rows = b("Reshape", [act, b("Concat", [minus_one, act_width], "act_rows_shape", axis=0)], "act_rows")
    h2 = b("GroupedMatMul", [act_rows, "fc2_weight", slot_ids, *filter(None, [fc2_bias])], "h2")
    slots_shape = b("Concat", [b("Shape", [w], "tk"), h_dim], "slots_shape", axis=0)
    per_slot = b("Reshape", [h2, slots_shape], "expert_out")  # [T, k, H]
    if not a["apply_weight_on_input"]:
        per_slot = b("Mul", [per_slot, w_slots], "weighted_out")
    return b("ReduceSum", [per_slot, b.const("slot_axis", [1])], "routed", keepdims=0)


_BIASED = (("fc1_bias", "fc1_weight"), ("fc2_bias", "fc2_weight"))


def _bias(b: _Body, name: str, weight: str) -> str:
    """The bias input ``name``, or zeros [G, N] shaped like ``weight``'s groups and columns."""
    if name in b.present:
        return name
    shape = b(
        "Concat",
        [b("Shape", [weight], f"{name}_g", start=0, end=1), b("Shape", [weight], f"{name}_n", start=2)],
        f"{name}_shape",
        axis=0,
    )
    zeros = b("ConstantOfShape", [shape], f"{name}_zeros_f32")
    return b("CastLike", [zeros, weight], f"{name}_zeros")


def _shared(b: _Body, x: str, a: Mapping[str, object], present: set[str]) -> str:
    """The shared expert, [T, H]."""
    act = _activation(b, b("MatMul", [x, "shared_fc1_weight"], "shared_h1"), a, "shared_act")
    out = b("MatMul", [act, "shared_fc2_weight"], "shared_out")
    if "shared_gate_weight" in present:
        gate = b("Sigmoid", [b("MatMul", [x, "shared_gate_weight"], "shared_gate_logit")], "shared_gate")
        out = b("Mul", [out, gate], "gated_shared_out")
    return out


def build_function(attrs: Mapping[str, object], present: Sequence[str]) -> list[onnx.FunctionProto]:
    """The FunctionProtos of the pieces this attribute set calls (callees first, as
    ReferenceEvaluator needs), then the MoE FunctionProto for these present inputs."""
    a = resolve(attrs)
    present_set = set(present)
    _check_present(present_set)
    b = _Body()
    b.present = present_set
    x = b("Flatten", ["X"], "tokens", axis=-1)
    idx, w = _routing(b, x, a, present_set)
    y = _experts(b, x, idx, w, a, present_set)
    if "shared_fc1_weight" in present_set:
        y = b("Add", [y, _shared(b, x, a, present_set)], "with_shared")
    b("Reshape", [y, b("Shape", ["X"], "x_shape")], "Y")
    moe = helper.make_function(
        PROPOSAL_DOMAIN,
        SCHEMA.name,
        list(INPUT_NAMES),
        ["Y"],
        b.nodes,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(PROPOSAL_DOMAIN, 1)],
        attributes=[spec.name for spec in ATTRIBUTES if spec.name in a],
        doc_string="MoE function body built for one attribute set (see proposals/moe).",
    )
    order = sorted(b.used, key=lambda name: (name not in _CALLEES, name))
    pieces = [piece_proto("GroupedMatMulBias" if name == "GroupedMatMul" and b.gmm_bias else name) for name in order]
    for p in pieces:
        del p.opset_import[:]
        p.opset_import.extend([helper.make_opsetid("", OPSET), helper.make_opsetid(PROPOSAL_DOMAIN, 1)])
    return [*pieces, moe]


# --8<-- [end:builder]


def piece_proto(name: str) -> onnx.FunctionProto:
    """A piece's FunctionProto, with an explicit true condition on each Loop.

    onnxscript leaves a ``for`` loop's condition input empty, which the spec allows,
    but onnx 1.23's ReferenceEvaluator then runs no iteration at all.
    """
    proto = PIECES[name].to_function_proto()
    if name == "GroupedMatMulBias":  # the RFC's with-bias body carries the op's own name
        proto.name = "GroupedMatMul"
    for graph_owner in _loops(proto.node):
        if graph_owner.input[1] == "":
            graph_owner.input[1] = "loop_forever"
            proto.node.insert(
                0,
                helper.make_node(
                    "Constant",
                    [],
                    ["loop_forever"],
                    value=helper.make_tensor("loop_forever", onnx.TensorProto.BOOL, [], [True]),
                ),
            )
    return proto


def _loops(nodes: Sequence[onnx.NodeProto]):
    for node in nodes:
        if node.op_type == "Loop":
            yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _loops(attr.g.node)


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
