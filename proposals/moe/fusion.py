"""Pattern-match fusions onto onnxruntime's ``com.microsoft.MoE``, with onnxscript's rewriter.

A backend that keeps GroupedMatMul (the RFC op) and has an MoE kernel would run these
rules. They recognise the routed part of an MoE block in four spellings:

- the **primitive form** a model builder emits (:mod:`proposals.moe.primitive`):
  GroupedMatMul, TopK values, SwiGLU-28 or ``x * Sigmoid(a * x)``, Mul + ReduceSum combine;
- the **inlined function body** (``onnx.inliner`` output of the MoE function op, with
  GroupedMatMul left as the RFC op, or inlined too: its ``If`` is recognised by
  :data:`GROUPED_MATMUL_FROM_IF`);
- the **gather-per-slot** exporter form, ``Squeeze(MatMul(Unsqueeze(x), Gather(W, idx)))``
  (transformers' ``batched_mm``, the RFC's decomposition), by :data:`GROUPED_MATMUL_FROM_GATHER`;
- the **dense all-experts** form is *not* fused; :func:`why_missed` says why (it is what
  mobius-onnx emits, see :mod:`proposals.moe.model_builder`).

Match conditions (checked in :func:`_moe_condition`, each miss says which failed):
TopK over the last axis, largest, of ``Softmax(logits)`` or ``Sigmoid(logits)`` (sigmoid
only with renormalization, mapped as ``log(sigmoid)``); the routing weights are the TopK
values or ``GatherElements`` of the same scores; renormalization is ``w / ReduceSum(w)``
over the last axis; an optional constant scale; fc1 is a GroupedMatMul of the tokens with
the TopK indices, fc2 a GroupedMatMul of the flattened activation with the same indices
as a column; expert weights and biases are initializers; the activation is gated SiLU
(concatenated or interleaved halves, optional clamp, constant alpha and beta), non-gated
ReLU, tanh-GELU or SiLU with alpha 1; the combine multiplies by the routing weights and
sums over the slot axis.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnx.inliner
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnxscript.rewriter import pattern, rewrite

from generator.onnx_build import PROPOSAL_DOMAIN
from proposals.moe.ort_moe import ORT_DOMAIN, ort_attrs, ort_fc1


# --8<-- [start:const]
def constant(value: ir.Value | None) -> np.ndarray | None:
    """The value as a numpy array if it is a constant: an initializer, a Constant node,
    or CastLike of one (the inlined body spells its attribute references that way)."""
    if value is None:
        return None
    if value.const_value is not None:
        return value.const_value.numpy()
    node = value.producer()
    if node is None:
        return None
    if node.op_type == "Constant" and node.domain == "":
        (attr,) = node.attributes.values()
        if attr.name == "value":
            return attr.value.numpy()
        return np.asarray(attr.value)
    if node.op_type == "CastLike":
        return constant(node.inputs[0])
    if node.op_type == "Neg":
        data = constant(node.inputs[0])
        return None if data is None else -data
    if node.op_type == "Reshape":  # the body's k reaches TopK as Reshape(k, [1])
        data, shape = constant(node.inputs[0]), constant(node.inputs[1])
        return None if data is None or shape is None else data.reshape(shape)
    return None


# --8<-- [end:const]


def _split(op, h, gated: str):
    """The gate and up halves of fc1's output (concatenated: Split; interleaved: strided Slices)."""
    if gated == "concatenated":
        return op.Split(h, axis=-1, num_outputs=2, _outputs=["gate", "up"])
    return (
        op.Slice(
            h,
            pattern.Var("gate_start"),
            pattern.ANY_VALUE,
            pattern.Var("gate_axis"),
            pattern.Var("gate_step"),
            _outputs=["gate"],
        ),
        op.Slice(
            h,
            pattern.Var("up_start"),
            pattern.ANY_VALUE,
            pattern.Var("up_axis"),
            pattern.Var("up_step"),
            _outputs=["up"],
        ),
    )


def _silu(op, x, alpha_name: str):
    """x * sigmoid(alpha * x) in either operand order of the inner Mul."""
    scaled = pattern.OrValue(
        [op.Mul(pattern.Var(alpha_name), x), op.Mul(x, pattern.Var(alpha_name)), x],
        tag_var=f"{alpha_name}_form",
        tag_values=["mul", "mul", "none"],
    )
    return op.Mul(x, op.Sigmoid(scaled))


ACTIVATIONS = ("glu_concatenated", "glu_interleaved", "swiglu28", "relu", "silu", "gelu_tanh")


def _activation(op, h, kind: str):
    """fc1's output through the expert activation, in the spellings the four forms use."""
    if kind == "relu":
        return op.Relu(h)
    if kind == "silu":
        return _silu(op, h, "alpha")
    if kind == "gelu_tanh":
        return op.Mul(op.Mul(pattern.Var("half"), h), op.Add(pattern.Var("one"), op.Tanh(pattern.ANY_VALUE)))
    if kind == "swiglu28":
        gate, up = _split(op, h, "concatenated")
        up = pattern.OrValue([op.Add(up, pattern.Var("beta")), up], tag_var="has_beta", tag_values=[True, False])
        return op.SwiGLU(gate, up, _outputs=["swiglu"])
    gate, up = _split(op, h, kind.removeprefix("glu_"))
    gate = pattern.OrValue([op.Min(gate, pattern.Var("limit")), gate], tag_var="clamped", tag_values=[True, False])
    up = pattern.OrValue(
        [op.Clip(up, pattern.Var("neg_limit"), pattern.Var("limit2")), up],
        tag_var="up_clamped",
        tag_values=[True, False],
    )
    up = pattern.OrValue([op.Add(up, pattern.Var("beta")), up], tag_var="has_beta", tag_values=[True, False])
    return op.Mul(_silu(op, gate, "alpha"), up)


def _moe_pattern(kind: str):
    def target(op, logits, fc1_weight, fc2_weight, k):
        scores = pattern.OrValue(
            [op.Softmax(logits, _outputs=["softmax"]), op.Sigmoid(logits)],
            tag_var="scoring",
            tag_values=["softmax", "sigmoid"],
        )
        values, idx = op.TopK(scores, k, _outputs=["values", "idx"])
        weights = pattern.OrValue([values, op.GatherElements(scores, idx, _outputs=["gathered"])])
        weights = pattern.OrValue(
            [op.Div(weights, op.ReduceSum(weights, pattern.Var("renorm_axes"), _outputs=["renorm_sum"])), weights],
            tag_var="renorm",
            tag_values=[1, 0],
        )
        weights = pattern.OrValue(
            [op.Mul(weights, pattern.Var("scale")), weights], tag_var="scaled", tag_values=[True, False]
        )
        h1 = op.GroupedMatMul(
            pattern.Var("tokens"), fc1_weight, idx, _domain=PROPOSAL_DOMAIN, _allow_other_inputs=True, _outputs=["h1"]
        )
        act = _activation(op, h1, kind)
        rows = op.Reshape(act, pattern.ANY_VALUE)
        slot_ids = op.Reshape(idx, pattern.Var("column"))
        h2 = op.GroupedMatMul(
            rows, fc2_weight, slot_ids, _domain=PROPOSAL_DOMAIN, _allow_other_inputs=True, _outputs=["h2"]
        )
        per_slot = op.Reshape(h2, pattern.ANY_VALUE)
        weighted = op.Mul(per_slot, op.Unsqueeze(weights, pattern.Var("slot_axis")))
        return op.ReduceSum(weighted, pattern.Var("sum_axes"), _outputs=["routed"])

    return target


class Miss(Exception):
    """A match that the kernel cannot compute; the message says why."""


def _ints(value) -> list[int] | None:
    array = constant(value)
    return None if array is None else [int(v) for v in np.ravel(array)]


def _float(value) -> float | None:
    array = constant(value)
    return None if array is None or array.size != 1 else float(np.ravel(array)[0])


def _check_routing(b: Mapping) -> None:
    topk = b["values"].producer() if b.get("values") is not None else b["idx"].producer()
    attrs = {name: a.value for name, a in topk.attributes.items()}
    if attrs.get("largest", 1) != 1 or attrs.get("axis", -1) not in (-1, 1):
        raise Miss("TopK is not largest over the experts axis")
    if b.get("softmax") is not None and b["softmax"].producer().attributes.get(
        "axis", ir.AttrInt64("axis", -1)
    ).value not in (-1, 1):
        raise Miss("Softmax is not over the experts axis")
    if b.get("gathered") is not None and b["gathered"].producer().attributes["axis"].value not in (-1, 1):
        raise Miss("GatherElements is not over the experts axis")
    if b["scoring"] == "sigmoid" and not b["renorm"]:
        raise Miss("sigmoid scores without renormalization: MoE always applies softmax")
    if b["renorm"] and _ints(b["renorm_axes"]) not in ([-1], [1]):
        raise Miss("renormalization is not over the slot axis")
    if b["scaled"] and _float(b["scale"]) is None:
        raise Miss("routing weights scaled by a non-constant")
    if _ints(b["k"]) is None:
        raise Miss("k is not a constant")
    if _ints(b["slot_axis"]) != [2] or _ints(b["sum_axes"]) != [1] or _ints(b["column"]) != [-1, 1]:
        raise Miss("the combine is not a weighted sum over the slot axis")


def _check_activation(b: Mapping, kind: str) -> dict[str, object]:
    """The op attributes the matched activation stands for."""
    if kind in ("relu", "gelu_tanh"):
        if kind == "gelu_tanh" and (_float(b["half"]), _float(b["one"])) != (0.5, 1.0):
            raise Miss("not the tanh GELU")
        return {"gated": 0, "activation": kind}
    alpha = 1.0 if b.get("alpha_form", "none") == "none" else _float(b["alpha"])
    if kind == "swiglu28":
        attr = b["swiglu"].producer().attributes.get("alpha")
        alpha = attr.value if attr is not None else 1.0
    if alpha is None:
        raise Miss("activation alpha is not a constant")
    if kind == "silu":
        if alpha != 1.0:
            raise Miss("non-gated silu with activation_alpha != 1")
        return {"gated": 0, "activation": "silu"}
    out = {"gated": 1, "activation": "silu", "activation_alpha": alpha}
    out["gate_up_layout"] = "interleaved" if kind == "glu_interleaved" else "concatenated"
    if kind == "glu_interleaved":
        got = [_ints(b[n]) for n in ("gate_start", "gate_axis", "gate_step", "up_start", "up_axis", "up_step")]
        if got != [[0], [-1], [2], [1], [-1], [2]]:
            raise Miss("the gate/up slices are not the even and odd columns")
    elif b["gate"].producer().attributes.get("axis", ir.AttrInt64("axis", 0)).value != -1:
        raise Miss("the gate/up split is not over the last axis")
    if b.get("has_beta"):
        beta = _float(b["beta"])
        if beta is None:
            raise Miss("activation beta is not a constant")
        out["activation_beta"] = beta
    if b.get("clamped") or b.get("up_clamped"):
        limit, limit2, neg = (
            _float(b.get(n)) if b.get(n) is not None else None for n in ("limit", "limit2", "neg_limit")
        )
        if not (b.get("clamped") and b.get("up_clamped") and limit is not None and limit == limit2 and neg == -limit):
            raise Miss("the clamp is not gate <= limit, -limit <= up <= limit (MoE's swiglu_limit)")
        out["swiglu_limit"] = limit
    return out


def _arrays(b: Mapping) -> dict[str, np.ndarray]:
    """The expert weights and biases, which must be initializers (they are re-laid out once)."""
    out = {}
    for name, node_value in (("fc1", b["h1"]), ("fc2", b["h2"])):
        node = node_value.producer()
        weight = node.inputs[1].const_value
        if weight is None:
            raise Miss("expert weights are not initializers (the rewrite re-lays them out once)")
        out[f"{name}_weight"] = weight.numpy()
        if len(node.inputs) > 3 and node.inputs[3] is not None:
            bias = constant(node.inputs[3])
            if bias is None:
                raise Miss("expert biases are not constants")
            out[f"{name}_bias"] = bias
    return out


def _moe_rule(kind: str) -> pattern.RewriteRule:
    def condition(context, **b) -> bool:
        try:
            _check_routing(b)
            b["_attrs"] = _check_activation(b, kind)
            b["_arrays"] = _arrays(b)
        except Miss as miss:
            MISSES.append(str(miss))
            return False
        PENDING[id(b["routed"])] = (b["_attrs"], b["_arrays"])
        return True

    def replacement(op, logits, k, routed, tokens, **b):
        attrs, arrays = PENDING.pop(id(routed))
        attrs |= {"normalize_routing_weights": int(b["renorm"])}
        prefix = f"{routed.name}/ort_"
        probs = op.Log(op.Sigmoid(logits)) if b["scoring"] == "sigmoid" else logits

        def init(name: str, array: np.ndarray) -> ir.Value:
            return op.initializer(ir.tensor(np.ascontiguousarray(array)), name=prefix + name)

        fc1 = init("fc1", ort_fc1(arrays["fc1_weight"], attrs))
        fc2 = init("fc2", np.swapaxes(arrays["fc2_weight"], 1, 2))
        fc1_bias = (
            init("fc1_bias", ort_fc1(arrays["fc1_bias"][..., None, :], attrs)[..., 0]) if "fc1_bias" in arrays else None
        )
        fc2_bias = init("fc2_bias", arrays["fc2_bias"]) if "fc2_bias" in arrays else None
        y = op.MoE(tokens, probs, fc1, fc1_bias, fc2, fc2_bias, _domain=ORT_DOMAIN, **ort_attrs(attrs, _ints(k)[0]))
        scale = _float(b["scale"]) if b["scaled"] else 1.0
        if scale != 1.0:
            y = op.Mul(y, op.CastLike(init("scale", np.array(scale, np.float32)), y))
        return y

    # remove_nodes=False: the body reads Shape() of matched values for its Reshapes; the
    # rewrite leaves the old nodes, and dead-code removal drops them once nothing reads them
    return pattern.RewriteRule(_moe_pattern(kind), replacement, condition, name=f"moe_{kind}", remove_nodes=False)


PENDING: dict[int, tuple] = {}
MISSES: list[str] = []


# --8<-- [start:recover]
def _gather_form(op, x, weights, idx):
    """The RFC's decomposition as the gather-per-slot exporter form spells it."""
    return op.Squeeze(
        op.MatMul(op.Unsqueeze(x, pattern.Var("row_axes")), op.Gather(weights, idx, axis=0)), pattern.Var("sq")
    )


def _gather_condition(context, row_axes, sq, **_) -> bool:
    return _ints(row_axes) == [1, 2] and _ints(sq) == [2]


def _grouped_matmul(op, x, weights, idx, **_):
    return op.GroupedMatMul(x, weights, idx, _domain=PROPOSAL_DOMAIN)


GROUPED_MATMUL_FROM_GATHER = pattern.RewriteRule(_gather_form, _grouped_matmul, _gather_condition, name="gmm_gather")


def _if_form(op, idx):
    """The inlined GroupedMatMul body: If(Size(idx) == Size(Unique(idx))) chooses the strategy."""
    used = op.Unique(op.Reshape(idx, pattern.ANY_VALUE), _outputs=["used", "i1", "i2", "i3"])[0]
    return op.If(op.Equal(op.Size(idx), op.Size(used)), _outputs=["chosen"])


def _if_operands(if_node: ir.Node) -> tuple[ir.Value, ir.Value, ir.Value | None] | None:
    """(input, weights, bias) if the If's then-branch is the body's Gather + MatMul (+ bias) branch."""
    then = if_node.attributes["then_branch"].value
    ops = [n.op_type for n in then]
    gathers = [n for n in then if n.op_type == "Gather"]
    unsqueeze = next((n for n in then if n.op_type == "Unsqueeze"), None)
    if unsqueeze is None or not {"MatMul", "Squeeze"} <= set(ops) or not gathers:
        return None
    bias = gathers[1].inputs[0] if len(gathers) > 1 and "Add" in ops else None
    return unsqueeze.inputs[0], gathers[0].inputs[0], bias


def _if_condition(context, chosen, **_) -> bool:
    return _if_operands(chosen.producer()) is not None


def _grouped_matmul_from_if(op, idx, chosen, **_):
    x, weights, bias = _if_operands(chosen.producer())
    return op.GroupedMatMul(x, weights, idx, *([bias] if bias is not None else []), _domain=PROPOSAL_DOMAIN)


# remove_nodes=False: the else branch's Loop also reads Unique's output; dead-code removal
# drops the If and its inputs once the recovered GroupedMatMul replaces its output
GROUPED_MATMUL_FROM_IF = pattern.RewriteRule(
    _if_form, _grouped_matmul_from_if, _if_condition, name="gmm_if", remove_nodes=False
)


def _bias_form(op, x, weights, idx, bias):
    """The gather-per-slot form's bias line, after its product became a GroupedMatMul."""
    return op.Add(op.GroupedMatMul(x, weights, idx, _domain=PROPOSAL_DOMAIN), op.Gather(bias, idx, axis=0))


def _grouped_matmul_bias(op, x, weights, idx, bias):
    return op.GroupedMatMul(x, weights, idx, bias, _domain=PROPOSAL_DOMAIN)


GROUPED_MATMUL_BIAS = pattern.RewriteRule(_bias_form, _grouped_matmul_bias, name="gmm_bias")
# --8<-- [end:recover]

MOE_RULES = [_moe_rule(kind) for kind in ACTIVATIONS]


def why_missed(model: onnx.ModelProto) -> list[str]:
    """For each TopK router that no rule starts to match (so :func:`fuse` records no
    near miss), the condition of the rules that the graph fails first."""
    graph = ir.serde.deserialize_model(model).graph
    reasons = []
    for node in graph.all_nodes():
        if node.op_type != "TopK":
            continue
        values, indices = node.outputs
        index_users = {user.op_type for user, _ in indices.uses()}
        value_users = {user.op_type for user, _ in values.uses()}
        scores = node.inputs[0].producer()
        if "GroupedMatMul" not in index_users:
            dense = " (every expert runs on every token, masked by Equal(indices, e))" if "Equal" in index_users else ""
            reasons.append(
                f"TopK's indices feed no GroupedMatMul{dense}; the rules need GroupedMatMul(tokens, fc1, indices)"
            )
        if "Softmax" in value_users:
            reasons.append(
                "softmax is taken over the top-k logits; the rules need TopK of Softmax(logits) or Sigmoid(logits)"
            )
        elif scores is None or scores.op_type not in ("Softmax", "Sigmoid", "Add"):
            reasons.append("TopK's input is not Softmax(logits) or Sigmoid(logits)")
    return reasons


# --8<-- [start:fuse]
def fuse(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, object]]:
    """Every MoE block that the rules recognise replaced by com.microsoft.MoE, and a report:
    the number fused and, for each near match, why it was left alone.

    Model-local functions other than GroupedMatMul are inlined first (a backend that
    knows GroupedMatMul keeps it), so a model holding the MoE function op is fused
    through its body."""
    keep = {(PROPOSAL_DOMAIN, "GroupedMatMul")}
    selected = [(f.domain, f.name) for f in model.functions if (f.domain, f.name) not in keep]
    inlined = onnx.inliner.inline_selected_functions(model, selected) if selected else model
    ir_model = ir.serde.deserialize_model(inlined)
    ir_model.functions.clear()  # rewrite the graph only, never GroupedMatMul's own body
    MISSES.clear()
    ir_model = rewrite(ir_model, [GROUPED_MATMUL_FROM_GATHER, GROUPED_MATMUL_FROM_IF])
    ir_model = rewrite(ir_model, [GROUPED_MATMUL_BIAS])
    RemoveUnusedNodesPass()(ir_model)
    ir_model = rewrite(ir_model, MOE_RULES)
    # onnx_model round trip: a removed If's subgraph nodes still count as users of the
    # values they read until the model is re-read, so dead-code removal runs on a fresh copy
    ir_model = ir.serde.deserialize_model(ir.serde.serialize_model(ir_model))
    RemoveUnusedNodesPass()(ir_model)
    fused = sum(1 for n in ir_model.graph.all_nodes() if (n.domain, n.op_type) == (ORT_DOMAIN, "MoE"))
    _keep_used_functions(ir_model, model)
    out = ir.serde.serialize_model(ir_model)
    return out, {"fused": fused, "misses": sorted(set(MISSES))}


# --8<-- [end:fuse]


def _keep_used_functions(model: ir.Model, source: onnx.ModelProto) -> None:
    """Functions: those still called; the GroupedMatMul body if a recovered node stays unfused.
    Opset imports: the domains the graph and those functions use."""
    from proposals.moe.grouped_matmul import functions

    called = {(n.domain, n.op_type) for n in model.graph}
    kept = [f for f in source.functions if (f.domain, f.name) in called]
    if (PROPOSAL_DOMAIN, "GroupedMatMul") in called and not any(f.name == "GroupedMatMul" for f in kept):
        calls = [n for n in model.graph if n.op_type == "GroupedMatMul"]
        with_bias = any(len(n.inputs) > 3 and n.inputs[3] is not None for n in calls)
        kept = functions(bias=with_bias)
    model.functions.clear()
    for function in map(ir.serde.deserialize_function, kept):
        model.functions[function.identifier()] = function
    domains = {n.domain for n in model.graph} | {d.domain for f in kept for d in f.opset_import}
    opsets = {d: v for d, v in model.opset_imports.items() if d in domains or d == ""}
    if ORT_DOMAIN in domains:
        opsets[ORT_DOMAIN] = 1
    if PROPOSAL_DOMAIN in domains:
        opsets[PROPOSAL_DOMAIN] = 1
    model.opset_imports.clear()
    model.opset_imports.update(sorted(opsets.items()))
