"""The MoE function op's schema, defined once as plain data.

Everything else reads this: attribute validation and defaults (:func:`resolve`),
the function-body builder, the numpy reference's docstrings, and the spec page.
"""

from __future__ import annotations

from collections.abc import Mapping

from generator.errors import UsageError
from generator.onnx_build import PROPOSAL_DOMAIN
from generator.opspec import Attribute, OpSchema, Parameter, TypeConstraint

OPSET = 21  # ai.onnx version the body uses (ORT 1.32, OpenVINO and ReferenceEvaluator all run it)
OPTIONAL = None  # an attribute with no default: its absence turns the feature off

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
score is the sum of its two best `choice` values (`group_score="top2_sum"`, which needs
groups of at least two experts) or its best one (`"max"`); experts outside the
`topk_group` best groups get `choice = -inf`.
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

# --8<-- [start:attributes]
ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("k", "int", "Number of experts each token is routed to (1 <= k <= E)."),
    Attribute("scoring", "string", "Score function over the router logits.",
              default="softmax", allowed=("softmax", "sigmoid")),
    Attribute("normalize_routing_weights", "int",
              "1: divide the k selected weights by their sum.", default=0, allowed=(0, 1)),
    Attribute("routed_scaling_factor", "float",
              "Multiplies the routing weights after normalization.", default=1.0),
    Attribute("n_group", "int",
              "Number of expert groups for group-limited selection (1: off). Must divide E.",
              default=1),
    Attribute("topk_group", "int",
              "Number of groups kept for selection; absent: all n_group groups.",
              default=OPTIONAL),
    Attribute("group_score", "string",
              "How a group is scored: the sum of its two best choice scores, or its best one.",
              default="top2_sum", allowed=("top2_sum", "max")),
    Attribute("activation", "string", "Expert activation f.", default="silu",
              allowed=ACTIVATIONS),
    Attribute("gated", "int", "1: GLU expert, f(gate) * (up + activation_beta); 0: f(h).",
              default=1, allowed=(0, 1)),
    Attribute("gate_up_layout", "string",
              "Where the gate and up columns sit in fc1's output when gated=1.",
              default="concatenated", allowed=("concatenated", "interleaved")),
    Attribute("activation_alpha", "float", "Slope inside silu: x * sigmoid(alpha * x).",
              default=1.0),
    Attribute("activation_beta", "float", "Added to the up half before the product.",
              default=0.0),
    Attribute("swiglu_limit", "float",
              "If given: gate = min(gate, limit), up = clip(up, -limit, limit); absent: no clamp.",
              default=OPTIONAL),
    Attribute("apply_weight_on_input", "int",
              "1: scale each expert's input by its routing weight instead of its output.",
              default=0, allowed=(0, 1)),
)
# --8<-- [end:attributes]

INPUTS: tuple[Parameter, ...] = (
    Parameter("X", "T", "[..., H]", "Tokens; all leading axes are flattened to T rows."),
    Parameter("router_weight", "T", "[H, E]", "Router projection."),
    Parameter("router_bias", "T", "[E]", "Added to the router logits.", optional=True),
    Parameter("selection_bias", "T", "[E]",
              "Added to the scores for selection only (DeepSeek-V3 e_score_correction_bias).",
              optional=True),
    Parameter("fc1_weight", "T", "[E, H, F*I]", "First projection per expert; F = 2 if gated."),
    Parameter("fc1_bias", "T", "[E, F*I]", "First projection bias per expert.", optional=True),
    Parameter("fc2_weight", "T", "[E, I, H]", "Second projection per expert."),
    Parameter("fc2_bias", "T", "[E, H]", "Second projection bias per expert.", optional=True),
    Parameter("shared_fc1_weight", "T", "[H, F*Is]", "Shared expert's first projection.",
              optional=True),
    Parameter("shared_fc2_weight", "T", "[Is, H]",
              "Shared expert's second projection (required with shared_fc1_weight).",
              optional=True),
    Parameter("shared_gate_weight", "T", "[H, 1]", "Sigmoid gate of the shared expert.",
              optional=True),
)

OUTPUTS: tuple[Parameter, ...] = (Parameter("Y", "T", "same as X", "The block's output."),)

SCHEMA = OpSchema(
    name="MoE",
    domain=PROPOSAL_DOMAIN,
    since_version=1,
    summary="Mixture of Experts: top-k routing, per-expert FFN, weighted combine, shared expert.",
    doc=DOC,
    attributes=ATTRIBUTES,
    inputs=INPUTS,
    outputs=OUTPUTS,
    type_constraints=(
        TypeConstraint("T", ("tensor(float)", "tensor(float16)", "tensor(bfloat16)"),
                       "Floating-point tensors; the body computes in T."),
    ),
)

INPUT_NAMES = tuple(p.name for p in INPUTS)


def resolve(attrs: Mapping[str, object]) -> dict[str, object]:
    """Checked attribute values with defaults filled in; optional attributes that are
    not given stay absent."""
    out = {name: v for name, v in SCHEMA.resolve(attrs).items() if v is not None}
    # floats given as ints (alpha=1) must still become FLOAT attributes on the node
    out = {n: float(v) if SCHEMA.attribute(n).type == "float" else v for n, v in out.items()}
    if out["k"] < 1:
        raise UsageError(f"invalid attribute k={out['k']} for {SCHEMA.qualified_name}: must be >= 1")
    if out["n_group"] < 1:
        raise UsageError(f"invalid attribute n_group={out['n_group']} for "
                         f"{SCHEMA.qualified_name}: must be >= 1")
    topk_group = out.get("topk_group", out["n_group"])
    if not 1 <= topk_group <= out["n_group"]:
        raise UsageError(f"invalid attribute topk_group={topk_group} for {SCHEMA.qualified_name}:"
                         f" must be in [1, n_group={out['n_group']}]")
    return out
