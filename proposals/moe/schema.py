"""The MoE function op's schema, defined once as plain data.

Everything else reads this: attribute validation and defaults (:func:`resolve`),
the function-body builder, the numpy reference's docstrings, and the spec page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from generator.errors import UsageError
from generator.onnx_build import PROPOSAL_DOMAIN

OPSET = 21  # ai.onnx version the body uses (ORT 1.32, OpenVINO and ReferenceEvaluator all run it)


@dataclass(frozen=True)
class Attribute:
    name: str
    type: str  # "int", "float" or "string"
    default: object  # None: required; MISSING_OK: optional without a default
    description: str
    allowed: tuple = ()


@dataclass(frozen=True)
class Formal:
    """One input or output."""

    name: str
    type_str: str
    shape: str
    description: str
    optional: bool = False


@dataclass(frozen=True)
class TypeConstraint:
    name: str
    types: tuple[str, ...]
    description: str


@dataclass(frozen=True)
class OpSchema:
    name: str
    domain: str
    version: int
    doc: str
    attributes: tuple[Attribute, ...]
    inputs: tuple[Formal, ...]
    outputs: tuple[Formal, ...]
    type_constraints: tuple[TypeConstraint, ...]


OPTIONAL = "optional"  # an attribute with no default whose absence means "feature off"

# --8<-- [start:doc]
DOC = """\
Mixture of Experts: a router picks `k` of `E` experts for every token, each picked
expert runs a small feed-forward network (FFN) on the token, and the output is the
weighted sum of the picked experts' outputs, plus an optional shared expert that
every token visits.

Tokens are the rows of `X` flattened to `[T, H]` (all axes but the last).

**Routing.** `logits = X @ router_weight (+ router_bias)`, shape `[T, E]`.
`scores = softmax(logits)` over the experts, or `sigmoid(logits)` (`scoring`).
Selection uses `choice = scores + selection_bias` when `selection_bias` is given
(it steers selection only; the weights come from the unbiased `scores`).
With `n_group > 1` the `E` experts form `n_group` equal contiguous groups; a group's
score is the sum of its two best `choice` values (`group_score="top2_sum"`) or its
best one (`"max"`); experts outside the `topk_group` best groups get `choice = -inf`.
`idx = TopK(choice, k)` (largest first; on ties the lower index wins),
`w = scores[idx]`; with `normalize_routing_weights=1`, `w = w / sum(w)`;
then `w = w * routed_scaling_factor`.

**Experts.** Expert `e` maps a row `x` of size `H` to
`FFN_e(x) = act(x @ fc1_weight[e] + fc1_bias[e]) @ fc2_weight[e] + fc2_bias[e]`.
Weights are stored `[in, out]` so that each product is a plain `MatMul`.
With `gated=1`, `fc1` produces `2*I` columns holding a gate half `g` and an up half
`u`, either concatenated (`g = h[:, :I]`, `u = h[:, I:]`) or interleaved
(`g = h[:, 0::2]`, `u = h[:, 1::2]`) (`gate_up_layout`). If `swiglu_limit` is given,
`g = min(g, limit)` and `u = clip(u, -limit, limit)`. Then
`act(h) = f(g) * (u + activation_beta)`. With `gated=0`, `act(h) = f(h)`.
`f` is `activation`: `silu(x) = x * sigmoid(activation_alpha * x)`,
`gelu` (erf form), `gelu_tanh` (tanh approximation) or `relu`.

**Combine.** `Y[t] = sum_j w[t, j] * FFN_{idx[t, j]}(X[t])`; with
`apply_weight_on_input=1` the weight scales the expert's input instead:
`Y[t] = sum_j FFN_{idx[t, j]}(w[t, j] * X[t])`.

**Shared expert.** If `shared_fc1_weight` is given, the same `act` with the shared
weights (no biases) gives `S[t] = act(X[t] @ shared_fc1_weight) @ shared_fc2_weight`;
with `shared_gate_weight`, `S[t] *= sigmoid(X[t] @ shared_gate_weight)`. `Y += S`.

The function body composes on `GroupedMatMul` (onnx/onnx PR #8193):
`GroupedMatMul(X [M, K], W [G, K, N], group_indices [M, k]) -> [M, k, N]` with
`Y[m, j] = X[m] @ W[group_indices[m, j]]`.
"""
# --8<-- [end:doc]

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")

ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("k", "int", None, "Number of experts each token is routed to (1 <= k <= E)."),
    Attribute("scoring", "string", "softmax", "Score function over the router logits.",
              ("softmax", "sigmoid")),
    Attribute("normalize_routing_weights", "int", 0,
              "1: divide the k selected weights by their sum.", (0, 1)),
    Attribute("routed_scaling_factor", "float", 1.0,
              "Multiplies the routing weights after normalization."),
    Attribute("n_group", "int", 1,
              "Number of expert groups for group-limited selection (1: off). Must divide E."),
    Attribute("topk_group", "int", OPTIONAL,
              "Number of groups kept for selection (default: all n_group groups)."),
    Attribute("group_score", "string", "top2_sum",
              "How a group is scored: sum of its two best choice scores, or its best one.",
              ("top2_sum", "max")),
    Attribute("activation", "string", "silu", "Expert activation f.", ACTIVATIONS),
    Attribute("gated", "int", 1, "1: GLU expert, f(gate) * (up + activation_beta).", (0, 1)),
    Attribute("gate_up_layout", "string", "concatenated",
              "Where gate and up columns sit in fc1's output when gated=1.",
              ("concatenated", "interleaved")),
    Attribute("activation_alpha", "float", 1.0, "Slope inside silu: x * sigmoid(alpha * x)."),
    Attribute("activation_beta", "float", 0.0, "Added to the up half before the product."),
    Attribute("swiglu_limit", "float", OPTIONAL,
              "If given: gate = min(gate, limit), up = clip(up, -limit, limit)."),
    Attribute("apply_weight_on_input", "int", 0,
              "1: scale each expert's input by its routing weight instead of its output.",
              (0, 1)),
)

INPUTS: tuple[Formal, ...] = (
    Formal("X", "T", "[..., H]", "Tokens; all leading axes are flattened to T rows."),
    Formal("router_weight", "T", "[H, E]", "Router projection."),
    Formal("router_bias", "T", "[E]", "Added to the router logits.", optional=True),
    Formal("selection_bias", "T", "[E]",
           "Added to the scores for selection only (DeepSeek-V3 e_score_correction_bias).",
           optional=True),
    Formal("fc1_weight", "T", "[E, H, F*I]", "First projection per expert; F = 2 if gated."),
    Formal("fc1_bias", "T", "[E, F*I]", "First projection bias per expert.", optional=True),
    Formal("fc2_weight", "T", "[E, I, H]", "Second projection per expert."),
    Formal("fc2_bias", "T", "[E, H]", "Second projection bias per expert.", optional=True),
    Formal("shared_fc1_weight", "T", "[H, F*Is]", "Shared expert's first projection.",
           optional=True),
    Formal("shared_fc2_weight", "T", "[Is, H]",
           "Shared expert's second projection (required with shared_fc1_weight).",
           optional=True),
    Formal("shared_gate_weight", "T", "[H, 1]", "Sigmoid gate of the shared expert.",
           optional=True),
)

OUTPUTS: tuple[Formal, ...] = (Formal("Y", "T", "same as X", "The block's output."),)

SCHEMA = OpSchema(
    name="MoE",
    domain=PROPOSAL_DOMAIN,
    version=1,
    doc=DOC,
    attributes=ATTRIBUTES,
    inputs=INPUTS,
    outputs=OUTPUTS,
    type_constraints=(
        TypeConstraint("T", ("tensor(float)", "tensor(float16)", "tensor(bfloat16)"),
                       "Floating-point tensors (the body computes in T)."),
    ),
)

INPUT_NAMES = tuple(f.name for f in INPUTS)
_BY_NAME = {a.name: a for a in ATTRIBUTES}


def resolve(attrs: Mapping[str, object]) -> dict[str, object]:
    """Validate attribute values against the schema and fill in defaults.

    Optional attributes without a default stay absent when not given.
    """
    unknown = sorted(set(attrs) - set(_BY_NAME))
    if unknown:
        raise UsageError(f"unknown MoE attribute(s) {unknown}; valid: {sorted(_BY_NAME)}")
    out: dict[str, object] = {}
    for spec in ATTRIBUTES:
        if spec.name in attrs:
            value = attrs[spec.name]
        elif spec.default is None:
            raise UsageError(f"MoE attribute {spec.name!r} is required ({spec.description})")
        elif spec.default is OPTIONAL:
            continue
        else:
            value = spec.default
        out[spec.name] = _check_value(spec, value)
    if out["k"] < 1:
        raise UsageError(f"MoE attribute k must be >= 1, got {out['k']}")
    if out["n_group"] < 1:
        raise UsageError(f"MoE attribute n_group must be >= 1, got {out['n_group']}")
    topk_group = out.get("topk_group", out["n_group"])
    if not 1 <= topk_group <= out["n_group"]:
        raise UsageError(f"MoE topk_group must be in [1, n_group={out['n_group']}], got {topk_group}")
    return out


def _check_value(spec: Attribute, value: object) -> object:
    kinds = {"int": (int,), "float": (int, float), "string": (str,)}[spec.type]
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise UsageError(f"MoE attribute {spec.name!r} must be a {spec.type}, got {value!r}")
    if spec.type == "float":
        value = float(value)
    if spec.allowed and value not in spec.allowed:
        raise UsageError(
            f"MoE attribute {spec.name}={value!r} is not supported; valid: {list(spec.allowed)}"
        )
    return value
