"""Backend substitution: MoE function-op nodes -> onnxruntime's ``com.microsoft.MoE``,
done by the fusion rules of :mod:`proposals.moe.fusion` on the inlined body.

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
from onnx import helper

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


def substitute(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``model`` with every expressible MoE node replaced by com.microsoft.MoE,
    and, per MoE node, ``"com.microsoft.MoE"`` or why it was left alone.

    The replacement is done by the pattern-match fusion rules of
    :mod:`proposals.moe.fusion` on the inlined body; :func:`why_not` decides, from the
    node's attributes, which nodes are handed to them, and the fusion must then match."""
    from proposals.moe.fusion import fuse

    constants = {i.name for i in model.graph.initializer}
    report = {}
    for node in model.graph.node:
        if (node.domain, node.op_type) == (SCHEMA.domain, SCHEMA.name):
            names = {f: v for f, v in zip(INPUT_NAMES, node.input, strict=False) if v}
            reason = why_not(_attrs(node), set(names), {f for f, v in names.items() if v in constants})
            report[node.name or node.output[0]] = reason or "com.microsoft.MoE"
    if not any(r == "com.microsoft.MoE" for r in report.values()):
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out, report
    if any(r != "com.microsoft.MoE" for r in report.values()):
        raise NotImplementedError("a model mixing expressible and other MoE nodes")  # one body per model
    fused, fusion_report = fuse(model)
    if fusion_report["fused"] != len(report):
        raise AssertionError(f"the fusion rules missed an expressible MoE node: {fusion_report}")
    return stamp(fused), report
