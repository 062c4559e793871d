"""Backend substitution: MoE function-op nodes -> onnxruntime's ``com.microsoft.MoE``.

A backend with its own MoE kernel replaces the function op where the semantics
match and leaves the rest to the body. ORT 1.32's CPU kernel computes
``softmax(router_probs)`` over all experts, top-k, optional renormalization, then
``sum w * fc2(act(fc1(x)))``; its SwiGLU needs gate/up *interleaved* in fc1
(``swiglu_fusion=1``; CPU has no fc3 and no concatenated layout), and its ``gelu``
is the tanh approximation. Weights are ``[E, out, in]``, so the rewrite re-lays out
the (constant) expert weights once.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from generator.onnx_build import stamp
from proposals.moe.schema import INPUT_NAMES, SCHEMA

ORT_DOMAIN = "com.microsoft"


# --8<-- [start:why_not]
def why_not(attrs: Mapping[str, object], present: set[str], constants: set[str]) -> str | None:
    """Why com.microsoft.MoE cannot compute this MoE node (None: it can)."""
    if "selection_bias" in present:
        return "selection-only bias: MoE selects and weighs with the same scores (QMoE's router_weights could)"
    if attrs.get("n_group", 1) > 1:
        return "group-limited top-k has no MoE attribute"
    if attrs.get("apply_weight_on_input", 0):
        return "MoE weighs expert outputs, not inputs"
    if attrs.get("scoring") == "sigmoid" and not attrs.get("normalize_routing_weights"):
        return "sigmoid scores without renormalization: MoE always applies softmax"
    activation, gated = attrs.get("activation", "silu"), attrs.get("gated", 1)
    if gated and activation != "silu":
        return f"gated {activation}: MoE's swiglu gates with SiLU only"
    if not gated and activation == "gelu":
        return "erf GELU: MoE's gelu is the tanh approximation"
    if not gated and activation == "silu" and attrs.get("activation_alpha", 1.0) != 1.0:
        return "non-gated silu with activation_alpha != 1"
    weights = {"fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias", "shared_fc1_weight", "shared_fc2_weight"} & present
    if not weights <= constants:
        return "expert weights are not initializers (the rewrite re-lays them out once)"
    return None


# --8<-- [end:why_not]


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    out = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        out[attr.name] = value.decode() if isinstance(value, bytes) else value
    return out


def _ort_fc1(w: np.ndarray, attrs: Mapping[str, object]) -> np.ndarray:
    """[..., H, F*I] in the op's layout -> [..., F*I, H] with gate/up interleaved."""
    if attrs.get("gated", 1) and attrs.get("gate_up_layout", "concatenated") == "concatenated":
        gate, up = np.split(w, 2, axis=-1)
        w = np.stack([gate, up], axis=-1).reshape(w.shape)
    return np.ascontiguousarray(np.swapaxes(w, -1, -2))


def _ort_attrs(attrs: Mapping[str, object], k: int) -> dict[str, object]:
    gated = attrs.get("gated", 1)
    out = {
        "k": k,
        "normalize_routing_weights": int(attrs.get("normalize_routing_weights", 0)),
        "activation_type": "swiglu"
        if gated
        else {"relu": "relu", "gelu_tanh": "gelu", "silu": "silu"}[attrs["activation"]],
    }
    if gated:
        out |= {
            "swiglu_fusion": 1,
            "activation_alpha": float(attrs.get("activation_alpha", 1.0)),
            "activation_beta": float(attrs.get("activation_beta", 0.0)),
        }
        if "swiglu_limit" in attrs:
            out["swiglu_limit"] = float(attrs["swiglu_limit"])
    return out


class _Rewrite:
    """New nodes and initializers replacing one MoE node."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.nodes, self.inits = prefix, [], []

    def node(self, op: str, inputs, name: str, domain: str = "", **attrs) -> str:
        out = f"{self.prefix}{name}"
        self.nodes.append(helper.make_node(op, list(inputs), [out], name=out, domain=domain, **attrs))
        return out

    def const(self, name: str, array: np.ndarray) -> str:
        out = f"{self.prefix}{name}"
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), out))
        return out


# --8<-- [start:rewrite]
def _rewrite(
    node: onnx.NodeProto, attrs: Mapping[str, object], arrays: Mapping[str, np.ndarray], names: Mapping[str, str]
) -> _Rewrite:
    r = _Rewrite(f"{node.name or node.output[0]}/ort_")
    x = r.node("Flatten", [names["X"]], "tokens", axis=-1)
    logits = r.node("MatMul", [x, names["router_weight"]], "logits")
    if "router_bias" in names:
        logits = r.node("Add", [logits, names["router_bias"]], "biased_logits")
    if attrs.get("scoring") == "sigmoid":
        # softmax(log(sigmoid(l))) renormalized over the top-k = sigmoid(l) renormalized
        logits = r.node("Log", [r.node("Sigmoid", [logits], "sigmoid")], "log_sigmoid")
    fc1 = r.const("fc1", _ort_fc1(arrays["fc1_weight"], attrs))
    fc1_bias = (
        r.const("fc1_bias", _ort_fc1(arrays["fc1_bias"][..., None, :], attrs)[..., 0]) if "fc1_bias" in arrays else ""
    )
    fc2 = r.const("fc2", np.swapaxes(arrays["fc2_weight"], 1, 2))
    fc2_bias = names.get("fc2_bias", "")
    y = r.node(
        "MoE", [x, logits, fc1, fc1_bias, fc2, fc2_bias], "routed", ORT_DOMAIN, **_ort_attrs(attrs, int(attrs["k"]))
    )
    scale = float(attrs.get("routed_scaling_factor", 1.0))
    if scale != 1.0:
        y = r.node("Mul", [y, r.const("scale", np.array(scale, np.float32))], "scaled")
    if "shared_fc1_weight" in arrays:
        y = r.node("Add", [y, _shared(r, x, attrs, arrays, names)], "with_shared")
    r.nodes.append(
        helper.make_node(
            "Reshape", [y, r.node("Shape", [names["X"]], "x_shape")], [node.output[0]], name=f"{r.prefix}output"
        )
    )
    return r


def _shared(r: _Rewrite, x: str, attrs, arrays, names) -> str:
    """The shared expert as a one-expert MoE: softmax over one logit is weight 1."""
    rows = r.node("Shape", [x], "rows", start=0, end=1)
    one = r.const("one", np.array([1], np.int64))
    zeros = r.node(
        "ConstantOfShape",
        [r.node("Concat", [rows, one], "logit_shape", axis=0)],
        "zero_logits",
        value=numpy_helper.from_array(np.zeros(1, np.float32)),
    )
    fc1 = r.const("shared_fc1", _ort_fc1(arrays["shared_fc1_weight"][None], attrs))
    fc2 = r.const("shared_fc2", arrays["shared_fc2_weight"].T[None])
    out = r.node("MoE", [x, zeros, fc1, "", fc2], "shared", ORT_DOMAIN, **_ort_attrs(attrs, 1))
    if "shared_gate_weight" in names:
        gate = r.node(
            "Sigmoid", [r.node("MatMul", [x, names["shared_gate_weight"]], "shared_gate_logit")], "shared_gate"
        )
        out = r.node("Mul", [out, gate], "gated_shared")
    return out


# --8<-- [end:rewrite]


def substitute(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``model`` with every expressible MoE node replaced by com.microsoft.MoE,
    and, per MoE node, ``"com.microsoft.MoE"`` or why it was left alone."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    constants = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    report, new_nodes, new_inits = {}, [], []
    for node in graph.node:
        if (node.domain, node.op_type) != (SCHEMA.domain, SCHEMA.name):
            new_nodes.append(node)
            continue
        names = {f: v for f, v in zip(INPUT_NAMES, node.input, strict=False) if v}
        attrs = _attrs(node)
        reason = why_not(attrs, set(names), {f for f, v in names.items() if v in constants})
        label = node.name or node.output[0]
        if reason is not None:
            report[label] = reason
            new_nodes.append(node)
            continue
        arrays = {f: constants[v] for f, v in names.items() if v in constants}
        rewrite = _rewrite(node, attrs, arrays, names)
        new_nodes.extend(rewrite.nodes)
        new_inits.extend(rewrite.inits)
        report[label] = "com.microsoft.MoE"
    del graph.node[:]
    graph.node.extend(new_nodes)
    graph.initializer.extend(new_inits)
    _drop_unused(out)
    if any(n.domain == ORT_DOMAIN for n in graph.node):
        out.opset_import.append(helper.make_opsetid(ORT_DOMAIN, 1))
    return stamp(out), report


def _drop_unused(model: onnx.ModelProto) -> None:
    """Remove initializers and model-local functions nothing refers to any more."""
    graph = model.graph
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    if not any(n.domain == SCHEMA.domain for n in graph.node):
        del model.functions[:]
        kept_opsets = [o for o in model.opset_import if o.domain != SCHEMA.domain]
        del model.opset_import[:]
        model.opset_import.extend(kept_opsets)
