"""Pattern-match fusions onto onnxruntime's ``com.microsoft.MoE``, with onnxscript's rewriter.

A backend that keeps GroupedMatMul (the RFC op) and has an MoE kernel would run these
rules. They recognise the routed part of an MoE block in these spellings:

- the **primitive form** a model builder emits (:mod:`proposals.moe.primitive`):
  GroupedMatMul (the proposal-domain op or ai.onnx GroupedMatMul-29), TopK values,
  SwiGLU-28 or ``x * Sigmoid(a * x)``, Mul + ReduceSum combine;
- the **inlined function body** (``onnx.inliner`` output of the MoE function op, with
  GroupedMatMul left as the RFC op, or inlined too: its ``If`` is recognised by
  :data:`GROUPED_MATMUL_FROM_IF`);
- the **gather-per-slot** exporter form, ``Squeeze(MatMul(Unsqueeze(x), Gather(W, idx)))``
  (transformers' ``batched_mm``, the RFC's decomposition), by :data:`GROUPED_MATMUL_FROM_GATHER`;
- the **dense all-experts** form (:func:`proposals.moe.primitive.dense_model`): every
  expert on every token as ``[E, T, ...]`` MatMuls by stacked weights, weighted by the TopK
  weights scattered into a ``[T, E]`` mask, by :data:`DENSE_RULES`; its unrolled spelling,
  one MLP per expert masked by ``Equal(indices, e)`` and summed by Adds (what mobius-onnx
  emits, see :mod:`proposals.moe.model_builder`), is first folded into it by
  :class:`UnrolledExpertsToDense` (an onnx-ir pass; its conditions are in its docstring).

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

The dense rules (:func:`_check_dense`) check the same routing, activation and weights
conditions, and: the routing weights (optionally reshaped to ``[-1, k]``) are scattered
over the experts axis into zeros (``ScatterElements`` with no reduction: TopK's indices are distinct per
token); the tokens are a ``[T, H]`` matrix; fc1 (or separate gate and up projections,
the concatenated halves of fc1) and fc2 are MatMuls by ``[E, in, out]`` initializers, with
optional ``[E, 1, out]`` bias Adds; E is the router's width; the combine multiplies by the
mask transposed to ``[E, T, 1]`` and sums over the experts axis without keepdims.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
import onnx.inliner
import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass, RemoveUnusedNodesPass
from onnxscript import TapeBuilder
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
    return _gated(op, *_split(op, h, kind.removeprefix("glu_")))


def _gated(op, gate, up):
    """SiLU(gate) * up, with the optional clamp and up offset (MoE's swiglu_limit, beta)."""
    gate = pattern.OrValue([op.Min(gate, pattern.Var("limit")), gate], tag_var="clamped", tag_values=[True, False])
    up = pattern.OrValue(
        [op.Clip(up, pattern.Var("neg_limit"), pattern.Var("limit2")), up],
        tag_var="up_clamped",
        tag_values=[True, False],
    )
    up = pattern.OrValue([op.Add(up, pattern.Var("beta")), up], tag_var="has_beta", tag_values=[True, False])
    return op.Mul(_silu(op, gate, "alpha"), up)


def _routing(op, logits, k):
    """(routing weights, expert indices): TopK of the scores, optionally renormalized and scaled."""
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
    return weights, idx


def _moe_pattern(kind: str, domain: str):
    """The routed part on GroupedMatMul of ``domain``: the proposal's, or "" (ai.onnx GroupedMatMul-29)."""

    def target(op, logits, fc1_weight, fc2_weight, k):
        weights, idx = _routing(op, logits, k)
        h1 = op.GroupedMatMul(
            pattern.Var("tokens"), fc1_weight, idx, _domain=domain, _allow_other_inputs=True, _outputs=["h1"]
        )
        act = _activation(op, h1, kind)
        rows = op.Reshape(act, pattern.ANY_VALUE)
        slot_ids = op.Reshape(idx, pattern.Var("column"))
        h2 = op.GroupedMatMul(rows, fc2_weight, slot_ids, _domain=domain, _allow_other_inputs=True, _outputs=["h2"])
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
    _check_router(b)
    if _ints(b["slot_axis"]) != [2] or _ints(b["sum_axes"]) != [1] or _ints(b["column"]) != [-1, 1]:
        raise Miss("the combine is not a weighted sum over the slot axis")


def _check_router(b: Mapping) -> None:
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
    elif b.get("gate") is not None and b["gate"].producer().attributes.get("axis", ir.AttrInt64("axis", 0)).value != -1:
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


def _moe_rule(kind: str, domain: str = PROPOSAL_DOMAIN) -> pattern.RewriteRule:
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
        return _emit_moe(op, tokens, logits, k, routed, attrs, arrays, b)

    # remove_nodes=False: the body reads Shape() of matched values for its Reshapes; the
    # rewrite leaves the old nodes, and dead-code removal drops them once nothing reads them
    name = f"moe_{kind}" if domain else f"moe_{kind}_onnx29"
    return pattern.RewriteRule(_moe_pattern(kind, domain), replacement, condition, name=name, remove_nodes=False)


def _emit_moe(op, tokens, logits, k, routed, attrs, arrays, b: Mapping):
    """com.microsoft.MoE on the matched tokens and router logits, the weights re-laid out once."""
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
    used = op.Unique(op.Cast(op.Reshape(idx, pattern.ANY_VALUE)), _outputs=["used", "i1", "i2", "i3"])[0]
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

# each rule on the proposal-domain op and on ai.onnx GroupedMatMul-29 (onnx 1.24)
MOE_RULES = [_moe_rule(kind, domain) for kind in ACTIVATIONS for domain in (PROPOSAL_DOMAIN, "")]


# --8<-- [start:dense]
def _projection(op, x, name: str):
    """x @ W (+ b): one projection of every expert at once, W [E, in, out], b [E, 1, out]."""
    h = op.MatMul(x, pattern.Var(f"{name}_weight"), _outputs=[f"{name}_out"])
    return pattern.OrValue(
        [op.Add(h, pattern.Var(f"{name}_bias")), h], tag_var=f"{name}_biased", tag_values=[True, False]
    )


def _flat(op, value, name: str):
    """The value, or Reshape(value, [-1, k]) (the unrolled-loop fold flattens the tokens)."""
    return pattern.OrValue(
        [op.Reshape(value, pattern.Var(f"{name}_shape")), value], tag_var=f"flat_{name}", tag_values=[True, False]
    )


def _dense_pattern(kind: str):
    def target(op, logits, k, tokens):
        weights, idx = _routing(op, logits, k)
        zeros = op.ConstantOfShape(pattern.ANY_VALUE, _outputs=["zeros"])
        mask = op.ScatterElements(zeros, _flat(op, idx, "idx"), _flat(op, weights, "weights"), _outputs=["mask"])
        if kind == "glu_two_projections":
            act = _gated(op, _projection(op, tokens, "gate"), _projection(op, tokens, "up"))
        else:
            act = _activation(op, _projection(op, tokens, "fc1"), kind)
        per_expert = op.Unsqueeze(op.Transpose(mask, _outputs=["mask_t"]), pattern.Var("expert_axis"))
        weighted = op.Mul(_projection(op, act, "fc2"), per_expert)
        return op.ReduceSum(weighted, pattern.Var("sum_axes"), _outputs=["routed"])

    return target


def _attr(value: ir.Value, name: str, default=None):
    attr = value.producer().attributes.get(name)
    return default if attr is None else attr.value


def _router_width(logits: ir.Value) -> int | None:
    """The number of experts the router scores: the logits' last dimension, or its MatMul's."""
    if logits.shape is not None and len(logits.shape) and isinstance(logits.shape[-1], int):
        return logits.shape[-1]
    node = logits.producer()
    while node is not None and node.op_type == "Add":  # a router bias
        node = node.inputs[0].producer()
    weight = constant(node.inputs[1]) if node is not None and node.op_type == "MatMul" else None
    return None if weight is None else weight.shape[-1]


def _dense_arrays(b: Mapping, kind: str) -> dict[str, np.ndarray]:
    """The stacked expert weights (initializers), as the MoE op's fc1 [E, H, F*I], fc2 [E, I, H]."""
    names = ("gate", "up", "fc2") if kind == "glu_two_projections" else ("fc1", "fc2")
    out = {}
    for name in names:
        weight = b[f"{name}_weight"].const_value
        if weight is None or len(weight.shape) != 3:
            raise Miss("expert weights are not [E, in, out] initializers (the rewrite re-lays them out once)")
        out[f"{name}_weight"] = weight.numpy()
        if b[f"{name}_biased"]:
            bias = constant(b[f"{name}_bias"])
            if bias is None or bias.ndim != 3 or bias.shape[1] != 1:
                raise Miss("expert biases are not [E, 1, out] constants")
            out[f"{name}_bias"] = bias[:, 0]
    if kind == "glu_two_projections":  # one fc1 with concatenated gate and up halves
        gate, up = out.pop("gate_weight"), out.pop("up_weight")
        out["fc1_weight"] = np.concatenate([gate, up], axis=-1)
        if "gate_bias" in out or "up_bias" in out:
            zero = np.zeros(gate.shape[::2], gate.dtype)
            out["fc1_bias"] = np.concatenate([out.pop("gate_bias", zero), out.pop("up_bias", zero)], axis=-1)
    experts = out["fc1_weight"].shape[0]
    if out["fc2_weight"].shape[0] != experts or _router_width(b["logits"]) != experts:
        raise Miss("the stacked experts are not the router's experts (or the router's width is not static)")
    return out


def _check_dense(b: Mapping) -> None:
    _check_router(b)
    k = _ints(b["k"])
    for name in ("idx", "weights"):
        if b[f"flat_{name}"] and _ints(b[f"{name}_shape"]) != [-1, *k]:
            raise Miss("the routing weights reach the mask through a Reshape that is not [-1, k]")
    zero = _attr(b["zeros"], "value")
    if zero is not None and np.any(zero.numpy()):
        raise Miss("the mask is not scattered into zeros")
    if _attr(b["mask"], "axis", 0) not in (1, -1) or _attr(b["mask"], "reduction", "none") != "none":
        raise Miss("the routing weights are not scattered over the experts axis")
    if list(_attr(b["mask_t"], "perm", [])) != [1, 0] or _ints(b["expert_axis"]) != [2]:
        raise Miss("the mask is not transposed to [E, T, 1]")
    if _ints(b["sum_axes"]) != [0] or _attr(b["routed"], "keepdims", 1) != 0:
        raise Miss("the combine is not a sum over the experts axis")
    if b["tokens"].shape is None or len(b["tokens"].shape) != 2:
        raise Miss("the tokens are not a [T, H] matrix")


def _dense_rule(kind: str) -> pattern.RewriteRule:
    def condition(context, **b) -> bool:
        try:
            _check_dense(b)
            attrs = _check_activation(b, "glu_concatenated" if kind == "glu_two_projections" else kind)
            arrays = _dense_arrays(b, kind)
        except Miss as miss:
            MISSES.append(str(miss))
            return False
        PENDING[id(b["routed"])] = (attrs, arrays)
        return True

    def replacement(op, logits, k, routed, tokens, **b):
        attrs, arrays = PENDING.pop(id(routed))
        if logits.shape is None or len(logits.shape) != 2:  # MoE reads router_probs as [T, E]
            logits = op.Reshape(logits, op.Concat(op.Constant(value_ints=[-1]), op.Shape(logits, start=-1), axis=0))
        return _emit_moe(op, tokens, logits, k, routed, attrs, arrays, b)

    name = f"moe_dense_{kind}"
    return pattern.RewriteRule(_dense_pattern(kind), replacement, condition, name=name, remove_nodes=False)


DENSE_RULES = [_dense_rule(kind) for kind in (*ACTIVATIONS, "glu_two_projections")]
# --8<-- [end:dense]


# --8<-- [start:unrolled]
# ops that act elementwise or on the last axis only, so a leading experts axis passes through
STACKABLE = {
    *("Add", "Sub", "Mul", "Div", "Min", "Max", "Pow", "Clip", "Where", "Cast", "CastLike", "Identity"),
    *("Sigmoid", "Tanh", "Relu", "Erf", "Gelu", "Neg", "Exp", "Log", "Sqrt", "Softplus", "HardSigmoid"),
}


def _only_user(value: ir.Value, op_types: tuple[str, ...]) -> ir.Node | None:
    users = [user for user, _ in value.uses()]
    return users[0] if len(users) == 1 and users[0].op_type in op_types else None


def _other(node: ir.Node, value: ir.Value) -> ir.Value:
    first, second = node.inputs
    return second if first is value else first


def _contribution(equal: ir.Node, indices: ir.Value) -> tuple[int, ir.Value, ir.Value, ir.Value] | None:
    """(e, w, y_e * weight_e, y_e) if ``equal`` starts y_e * ReduceSum(w * Cast(Equal(idx, e)), -1)."""
    e = _ints(_other(equal, indices))
    cast = _only_user(equal.outputs[0], ("Cast", "CastLike"))
    masked = cast and _only_user(cast.outputs[0], ("Mul",))
    summed = masked and _only_user(masked.outputs[0], ("ReduceSum",))
    scaled = summed and _only_user(summed.outputs[0], ("Mul",))
    if e is None or len(e) != 1 or scaled is None or len(summed.inputs) < 2:
        return None
    if _ints(summed.inputs[1]) not in ([-1], [1]) or _attr(summed.outputs[0], "keepdims", 1) != 1:
        return None
    return e[0], _other(masked, cast.outputs[0]), scaled.outputs[0], _other(scaled, summed.outputs[0])


def _contributions(indices: ir.Value) -> tuple[ir.Value, dict[int, tuple[ir.Value, ir.Value]]]:
    """(routing weights, {e: (y_e * weight_e, y_e)}): the unrolled loop's per-expert terms
    (empty if the indices feed none)."""
    found = [c for user, _ in indices.uses() if user.op_type == "Equal" and (c := _contribution(user, indices))]
    if not found:
        return None, {}
    if sorted(e for e, *_ in found) != list(range(len(found))):
        raise Miss("the Equal(indices, e) masks do not cover experts 0..E-1 once each")
    if len({id(w) for _, w, *_ in found}) != 1:
        raise Miss("the experts' masks weigh different routing weights")
    return found[0][1], {e: (term, y) for e, _, term, y in found}


def _sum_root(contributions: list[ir.Value]) -> ir.Value:
    """The value that sums every contribution through Adds alone (each partial sum read once)."""
    covered = {value: {i} for i, value in enumerate(contributions)}
    pending = list(contributions)
    while pending:
        users = [user for user, _ in pending.pop().uses()]
        if len(users) != 1 or users[0].op_type != "Add":
            continue
        a, b = users[0].inputs
        out = users[0].outputs[0]
        if a in covered and b in covered and not covered[a] & covered[b] and out not in covered:
            covered[out] = covered[a] | covered[b]
            pending.append(out)
    roots = [value for value, experts in covered.items() if len(experts) == len(contributions)]
    if not roots:
        raise Miss("the expert contributions are not summed by Adds alone")
    return roots[0]


def _expert(output: ir.Value, order: Mapping[ir.Node, int]) -> tuple[list[ir.Node], ir.Value]:
    """The nodes only this expert reads (graph order) and the one non-constant value they start from."""
    inside = {output.producer()}
    changed = True
    while changed:
        changed = False
        for node in list(inside):
            for value in node.inputs:
                producer = None if value is None or constant(value) is not None else value.producer()
                if producer is None or producer in inside:
                    continue
                if all(user in inside for out in producer.outputs for user, _ in out.uses()):
                    inside.add(producer)
                    changed = True
    nodes = sorted(inside, key=order.__getitem__)
    made = {out for node in nodes for out in node.outputs}
    sources = {v for node in nodes for v in node.inputs if v is not None and v not in made and constant(v) is None}
    if len(sources) != 1:
        raise Miss("an expert MLP does not start from one token tensor")
    return nodes, sources.pop()


def _stack(arrays: list[np.ndarray], node: ir.Node, position: int) -> np.ndarray:
    """The experts' constants for one input, stacked on a leading experts axis."""
    if all(a.shape == arrays[0].shape and np.array_equal(a, arrays[0]) for a in arrays):
        return arrays[0]
    if node.op_type == "MatMul" and position == 1 and arrays[0].ndim == 2:
        return np.stack(arrays)  # [E, in, out]
    if arrays[0].ndim <= 1:
        return np.stack(arrays).reshape(len(arrays), 1, -1)  # [E, 1, n]: broadcast over the tokens
    raise Miss(f"an expert-specific constant of rank {arrays[0].ndim} feeds {node.op_type}")


def _check_stackable(node: ir.Node) -> None:
    if node.op_type == "MatMul":
        if constant(node.inputs[0]) is not None or constant(node.inputs[1]) is None:
            raise Miss("an expert MatMul does not multiply its activations by a constant weight")
    elif node.op_type == "Split" and _attr(node.outputs[0], "axis", 0) >= 0:
        raise Miss("an expert Split is not over a negative (last) axis")
    elif node.op_type == "Slice" and any(a >= 0 for a in (_ints(node.inputs[3]) if len(node.inputs) > 3 else [0])):
        raise Miss("an expert Slice is not over negative (last) axes")
    elif node.op_type not in STACKABLE | {"Split", "Slice"}:
        raise Miss(f"expert op {node.op_type} is not elementwise, a last-axis op or a MatMul")


def _differ(a: ir.Node, b: ir.Node) -> bool:
    def key(n: ir.Node):
        attrs = {k: repr(v.value) for k, v in n.attributes.items()}
        return n.domain, n.op_type, len(n.inputs), len(n.outputs), attrs

    return key(a) != key(b)


def _experts_stacked(op, experts: list[tuple[list[ir.Node], ir.Value]], tokens: ir.Value, prefix: str) -> ir.Value:
    """Expert 0's nodes once more, on the [T, H] tokens, with every expert's constants stacked:
    [E, T, out]. The experts must match node for node (ops, attributes, wiring)."""
    first, _ = experts[0]
    for nodes, _ in experts[1:]:
        if len(nodes) != len(first) or any(map(_differ, first, nodes)):
            raise Miss("the experts' MLPs differ node for node")
    made: dict[ir.Value, ir.Value] = {}
    for position, node in enumerate(first):
        _check_stackable(node)
        inputs = []
        for slot, value in enumerate(node.inputs):
            if value is None:
                inputs.append(None)
            elif value is experts[0][1]:
                inputs.append(tokens)
            elif value in made:
                inputs.append(made[value])
            else:
                arrays = [constant(nodes[position].inputs[slot]) for nodes, _ in experts]
                if any(a is None for a in arrays):
                    raise Miss("the experts' MLPs are wired differently")
                name = f"{prefix}/stacked_{position}_{slot}"
                inputs.append(op.initializer(ir.tensor(np.ascontiguousarray(_stack(arrays, node, slot))), name=name))
        attrs = {k: v.value for k, v in node.attributes.items()}
        outs = op.op(node.op_type, *inputs, _domain=node.domain, _outputs=len(node.outputs), **attrs)
        made |= dict(zip(node.outputs, [outs] if len(node.outputs) == 1 else outs, strict=True))
    return made[first[-1].outputs[0]]


class UnrolledExpertsToDense(ir.passes.InPlacePass):
    """mobius-onnx's unrolled loop over the experts (``MoELayer.forward``) folded into the
    batched dense form that :data:`DENSE_RULES` fuse. Conditions, each miss saying which failed:

    1. a TopK's indices feed ``Equal(indices, e)`` for each e in 0..E-1 once, each cast to
       the routing weights' type, multiplied by one routing-weights tensor ``w`` and summed
       over the slot axis (keepdims): expert e's weight, which multiplies its output ``y_e``;
    2. the E products are summed by Adds alone, each partial sum read once;
    3. each ``y_e`` is computed from one token tensor by nodes that only it reads, the same
       for every expert node for node; they are MatMuls by a constant 2-D weight,
       elementwise ops, or Split/Slice over negative axes, so a leading experts axis passes
       through. Per-expert constants are stacked: ``[E, in, out]`` MatMul weights, ``[E, 1, n]``
       for rank-0/1 ones; equal constants are shared.

    TopK's indices are distinct per token, so scattering ``w`` at them gives the same
    per-expert weight as the masked sum.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for topk in [n for n in graph if n.op_type == "TopK"]:
            try:
                modified |= self._fold(graph, topk)
            except Miss as miss:
                MISSES.append(str(miss))
        return ir.passes.PassResult(model, modified=modified)

    @staticmethod
    def _fold(graph: ir.Graph, topk: ir.Node) -> bool:
        weights, found = _contributions(topk.outputs[1])
        if not found:
            return False
        order = {node: i for i, node in enumerate(graph)}
        root = _sum_root([found[e][0] for e in sorted(found)])
        experts = [_expert(found[e][1], order) for e in sorted(found)]
        x = experts[0][1]
        if any(source is not x for _, source in experts):
            raise Miss("the experts read different token tensors")
        op = TapeBuilder()
        minus_one = op.Constant(value_ints=[-1])
        tokens = op.Reshape(x, op.Concat(minus_one, op.Shape(x, start=-1), axis=0))  # [T, H]
        tokens.type, tokens.shape = x.type, ir.Shape([None, x.shape[-1] if x.shape is not None else None])
        k = _ints(topk.inputs[1])
        if k is None:
            raise Miss("k is not a constant")
        slots = op.Constant(value_ints=[-1, *k])
        flat_idx, flat_w = op.Reshape(topk.outputs[1], slots), op.Reshape(weights, slots)  # [T, k]
        h2 = _experts_stacked(op, experts, tokens, prefix=topk.name or f"topk_{len(graph.initializers)}")  # [E, T, H]
        rows = op.Shape(flat_w, end=1)
        zero = ir.tensor(np.zeros(1, constant(experts[0][0][-1].inputs[1]).dtype))
        mask_shape = op.Concat(rows, op.Constant(value_ints=[len(found)]), axis=0)
        mask = op.ScatterElements(op.ConstantOfShape(mask_shape, value=zero), flat_idx, flat_w, axis=1)
        per_expert = op.Unsqueeze(op.Transpose(mask, perm=[1, 0]), op.Constant(value_ints=[2]))
        y = op.ReduceSum(op.Mul(h2, per_expert), op.Constant(value_ints=[0]), keepdims=0)
        y = op.Reshape(y, op.Concat(op.Shape(x, end=-1), op.Shape(y, start=-1), axis=0))
        for value in op.initializers:
            graph.register_initializer(value)
        graph.insert_before(root.producer(), op.nodes)
        y.type, y.shape = root.type, root.shape
        root.replace_all_uses_with(y, replace_graph_outputs=True)
        return True


# --8<-- [end:unrolled]


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
        if not {"GroupedMatMul", "ScatterElements", "Equal", "Reshape"} & index_users:
            reasons.append(
                "TopK's indices feed no GroupedMatMul, scattered mask or Equal(indices, e) masks; the rules need "
                "GroupedMatMul(tokens, fc1, indices) or a dense all-experts combine"
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
    UnrolledExpertsToDense()(ir_model)
    NameFixPass()(ir_model)  # the fold's values are named per builder: unique across the graph
    RemoveUnusedNodesPass()(ir_model)
    ir_model = rewrite(ir_model, MOE_RULES + DENSE_RULES)
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
