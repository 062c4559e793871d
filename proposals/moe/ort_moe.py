"""What onnxruntime's ``com.microsoft.MoE`` can compute, and how the function op's attributes
and weights map onto it: shared by the fusion rules and the substitution."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper

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


def node_attrs(node: onnx.NodeProto) -> dict[str, object]:
    out = {}
    for attr in node.attribute:
        value = helper.get_attribute_value(attr)
        out[attr.name] = value.decode() if isinstance(value, bytes) else value
    return out


def ort_fc1(w: np.ndarray, attrs: Mapping[str, object]) -> np.ndarray:
    """[..., H, F*I] in the op's layout -> [..., F*I, H] with gate/up interleaved."""
    if attrs.get("gated", 1) and attrs.get("gate_up_layout", "concatenated") == "concatenated":
        gate, up = np.split(w, 2, axis=-1)
        w = np.stack([gate, up], axis=-1).reshape(w.shape)
    return np.ascontiguousarray(np.swapaxes(w, -1, -2))


def ort_attrs(attrs: Mapping[str, object], k: int) -> dict[str, object]:
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
