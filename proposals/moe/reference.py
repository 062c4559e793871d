"""numpy reference of the MoE op, written from the spec text in ``schema.DOC``.

It loops over tokens and slots on purpose: it shares no structure with the
function body (which gathers weights and scatters rows), so agreement means something.
Computation is in float64; the result is cast back to X's dtype.
"""

from __future__ import annotations

from collections.abc import Mapping
from math import erf, sqrt

import numpy as np

from proposals.moe.schema import check_shapes, resolve


def _softmax(v: np.ndarray) -> np.ndarray:
    e = np.exp(v - v.max())
    return e / e.sum()


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _f(v: np.ndarray, kind: str, alpha: float) -> np.ndarray:
    if kind == "silu":
        return v * _sigmoid(alpha * v)
    if kind == "gelu":
        return 0.5 * v * (1.0 + np.vectorize(erf)(v / sqrt(2.0)))
    if kind == "gelu_tanh":
        return 0.5 * v * (1.0 + np.tanh(sqrt(2.0 / np.pi) * (v + 0.044715 * v**3)))
    return np.maximum(v, 0.0)  # relu


def activation(h: np.ndarray, a: Mapping[str, object]) -> np.ndarray:
    """``act`` of the spec on one row of fc1's output."""
    if not a["gated"]:
        return _f(h, a["activation"], a["activation_alpha"])
    half = h.shape[-1] // 2
    if a["gate_up_layout"] == "concatenated":
        g, u = h[:half], h[half:]
    else:
        g, u = h[0::2], h[1::2]
    if "swiglu_limit" in a:
        limit = a["swiglu_limit"]
        g = np.minimum(g, limit)
        u = np.clip(u, -limit, limit)
    return _f(g, a["activation"], a["activation_alpha"]) * (u + a["activation_beta"])


# --8<-- [start:reference]
def route(x: np.ndarray, w: Mapping[str, np.ndarray], a: Mapping[str, object]):
    """Selected expert ids (k,) and their weights (k,) for one token row."""
    logits = x @ w["router_weight"]
    if w.get("router_bias") is not None:
        logits = logits + w["router_bias"]
    scores = _softmax(logits) if a["scoring"] == "softmax" else _sigmoid(logits)
    choice = scores.copy()
    if w.get("selection_bias") is not None:
        choice = choice + w["selection_bias"]
    n_group = a["n_group"]
    if n_group > 1:
        groups = choice.reshape(n_group, -1)
        best = -np.sort(-groups, axis=1)
        group_scores = best[:, :2].sum(axis=1) if a["group_score"] == "top2_sum" else best[:, 0]
        kept = _top(group_scores, a.get("topk_group", n_group))
        masked = np.full_like(groups, -np.inf)
        masked[kept] = groups[kept]
        choice = masked.reshape(-1)
    idx = _top(choice, a["k"])
    weights = scores[idx]
    if a["normalize_routing_weights"]:
        weights = weights / weights.sum()
    return idx, weights * a["routed_scaling_factor"]


def _top(v: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest values, largest first, lower index first on ties."""
    return np.array(sorted(range(v.shape[0]), key=lambda i: (-v[i], i))[:k], dtype=np.int64)


def expert(x: np.ndarray, e: int, w: Mapping[str, np.ndarray], a: Mapping[str, object]):
    """FFN_e(x) for one row."""
    h = x @ w["fc1_weight"][e]
    if w.get("fc1_bias") is not None:
        h = h + w["fc1_bias"][e]
    y = activation(h, a) @ w["fc2_weight"][e]
    if w.get("fc2_bias") is not None:
        y = y + w["fc2_bias"][e]
    return y


def shared(x: np.ndarray, w: Mapping[str, np.ndarray], a: Mapping[str, object]) -> np.ndarray:
    s = activation(x @ w["shared_fc1_weight"], a) @ w["shared_fc2_weight"]
    if w.get("shared_gate_weight") is not None:
        s = s * _sigmoid(x @ w["shared_gate_weight"])
    return s


def moe(inputs: Mapping[str, np.ndarray], **attrs: object) -> np.ndarray:
    """Y of the MoE op for inputs given by name (absent optional inputs may be missing)."""
    a = resolve(attrs)
    w = {n: np.asarray(v, dtype=np.float64) for n, v in inputs.items() if v is not None}
    check_shapes(a, {n: v.shape for n, v in w.items()})
    X = np.asarray(inputs["X"])
    rows = w["X"].reshape(-1, X.shape[-1])
    out = np.zeros_like(rows)
    for t, x in enumerate(rows):
        idx, weights = route(x, w, a)
        for e, wt in zip(idx, weights, strict=True):
            if a["apply_weight_on_input"]:
                out[t] += expert(wt * x, int(e), w, a)
            else:
                out[t] += wt * expert(x, int(e), w, a)
        if "shared_fc1_weight" in w:
            out[t] += shared(x, w, a)
    return out.reshape(X.shape).astype(X.dtype)


# --8<-- [end:reference]
