"""The MoE function op's schema, defined once as plain data.

Everything else reads this: attribute validation and defaults (:func:`resolve`),
the function-body builder, the numpy reference's docstrings, and the spec page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

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

**Constraints.** The sizes come from the inputs: `H` from `X`, `E` from
`router_weight`, `I` from `fc2_weight`, `Is` from `shared_fc2_weight`, and `F = 2` if
`gated=1` else `1`. Every input must have the shape listed for it below with those sizes
(`fc1_weight` `[E, H, F*I]`, `fc2_weight` `[E, I, H]`, and so on). The attributes must fit
`E`: `k <= E`; `n_group` divides `E`; with `n_group > 1` and `group_score="top2_sum"`
every group holds at least two experts (`E / n_group >= 2`); and `k` is at most the number
of experts in the kept groups, `k <= topk_group * E / n_group` (so no masked expert is
ever selected). A model that breaks one of these is invalid.

The function body composes on `GroupedMatMul` (onnx/onnx PR #8193):
`GroupedMatMul(input [M, K], weights [G, K, N], group_indices [M, k], bias? [G, N]) -> [M, k, N]`
with `output[m, j] = input[m] @ weights[group_indices[m, j]] (+ bias[group_indices[m, j]])`.
"""
# --8<-- [end:doc]

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")

# --8<-- [start:attributes]
ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute(
        "k",
        "int",
        "Number of experts each token is routed to: 1 <= k <= E, and k <= topk_group * E / n_group with expert groups.",
    ),
    Attribute(
        "scoring", "string", "Score function over the router logits.", default="softmax", allowed=("softmax", "sigmoid")
    ),
    Attribute(
        "normalize_routing_weights", "int", "1: divide the k selected weights by their sum.", default=0, allowed=(0, 1)
    ),
    Attribute("routed_scaling_factor", "float", "Multiplies the routing weights after normalization.", default=1.0),
    Attribute(
        "n_group", "int", "Number of expert groups for group-limited selection (1: off). Must divide E.", default=1
    ),
    Attribute(
        "topk_group", "int", "Number of groups kept for selection; absent: all n_group groups.", default=OPTIONAL
    ),
    Attribute(
        "group_score",
        "string",
        "How a group is scored: the sum of its two best choice scores (needs E / n_group >= 2 "
        "when n_group > 1), or its best one.",
        default="top2_sum",
        allowed=("top2_sum", "max"),
    ),
    Attribute("activation", "string", "Expert activation f.", default="silu", allowed=ACTIVATIONS),
    Attribute("gated", "int", "1: GLU expert, f(gate) * (up + activation_beta); 0: f(h).", default=1, allowed=(0, 1)),
    Attribute(
        "gate_up_layout",
        "string",
        "Where the gate and up columns sit in fc1's output when gated=1.",
        default="concatenated",
        allowed=("concatenated", "interleaved"),
    ),
    Attribute("activation_alpha", "float", "Slope inside silu: x * sigmoid(alpha * x).", default=1.0),
    Attribute("activation_beta", "float", "Added to the up half before the product.", default=0.0),
    Attribute(
        "swiglu_limit",
        "float",
        "If given: gate = min(gate, limit), up = clip(up, -limit, limit); absent: no clamp.",
        default=OPTIONAL,
    ),
    Attribute(
        "apply_weight_on_input",
        "int",
        "1: scale each expert's input by its routing weight instead of its output.",
        default=0,
        allowed=(0, 1),
    ),
)
# --8<-- [end:attributes]

INPUTS: tuple[Parameter, ...] = (
    Parameter("X", "T", "[..., H]", "Tokens; all leading axes are flattened to T rows."),
    Parameter("router_weight", "T", "[H, E]", "Router projection."),
    Parameter("router_bias", "T", "[E]", "Added to the router logits.", optional=True),
    Parameter(
        "selection_bias",
        "T",
        "[E]",
        "Added to the scores for selection only (DeepSeek-V3 e_score_correction_bias).",
        optional=True,
    ),
    Parameter("fc1_weight", "T", "[E, H, F*I]", "First projection per expert; F = 2 if gated."),
    Parameter("fc1_bias", "T", "[E, F*I]", "First projection bias per expert.", optional=True),
    Parameter("fc2_weight", "T", "[E, I, H]", "Second projection per expert."),
    Parameter("fc2_bias", "T", "[E, H]", "Second projection bias per expert.", optional=True),
    Parameter("shared_fc1_weight", "T", "[H, F*Is]", "Shared expert's first projection.", optional=True),
    Parameter(
        "shared_fc2_weight",
        "T",
        "[Is, H]",
        "Shared expert's second projection (required with shared_fc1_weight).",
        optional=True,
    ),
    Parameter("shared_gate_weight", "T", "[H, 1]", "Sigmoid gate of the shared expert.", optional=True),
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
        TypeConstraint(
            "T",
            ("tensor(float)", "tensor(float16)", "tensor(bfloat16)"),
            "Floating-point tensors; the body computes in T.",
        ),
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
        raise UsageError(f"invalid attribute n_group={out['n_group']} for {SCHEMA.qualified_name}: must be >= 1")
    topk_group = out.get("topk_group", out["n_group"])
    if not 1 <= topk_group <= out["n_group"]:
        raise UsageError(
            f"invalid attribute topk_group={topk_group} for {SCHEMA.qualified_name}:"
            f" must be in [1, n_group={out['n_group']}]"
        )
    return out


# The size each dimension letter of an input's shape is read from (F comes from `gated`).
_SIZE_SOURCES = {"H": ("X", -1), "E": ("router_weight", 1), "I": ("fc2_weight", 1), "Is": ("shared_fc2_weight", 0)}
_RANKS = {"router_weight": 2, "fc2_weight": 3, "shared_fc2_weight": 2}


def check_shapes(attrs: Mapping[str, object], shapes: Mapping[str, Sequence[int]]) -> None:
    """Raise a one-line UsageError unless the inputs' shapes agree with each other and
    with the attributes (the **Constraints** paragraph of the spec). ``shapes`` maps the
    present inputs' names to their shapes."""
    a = resolve(attrs)
    name = SCHEMA.qualified_name
    missing = [p.name for p in INPUTS if not p.optional and p.name not in shapes]
    if missing:
        raise UsageError(f"{name} needs input(s) {missing}")
    if len(shapes["X"]) < 1:
        raise UsageError(f"input X of {name} must have rank >= 1 ([..., H]), got a scalar")
    for input_name, rank in _RANKS.items():
        if input_name in shapes and len(shapes[input_name]) != rank:
            raise UsageError(
                f"input {input_name} of {name} must have rank {rank}, got shape {tuple(shapes[input_name])}"
            )
    sizes = {d: int(shapes[src][axis]) for d, (src, axis) in _SIZE_SOURCES.items() if src in shapes}
    sizes["F"] = 2 if a["gated"] else 1
    told = ", ".join(f"{d}={v}" for d, v in sizes.items())
    for param in INPUTS[1:]:
        if param.name in shapes:
            expected = _expected_shape(param, sizes)
            if tuple(shapes[param.name]) != expected:
                raise UsageError(
                    f"input {param.name} of {name} has shape {tuple(shapes[param.name])}; "
                    f"expected {param.shape} = {expected} ({told})"
                )
    _check_attributes_fit(a, sizes["E"])


def _expected_shape(param: Parameter, sizes: Mapping[str, int]) -> tuple[int, ...]:
    """The parameter's shape (``"[E, H, F*I]"``) with the sizes filled in."""
    dims = []
    for dim in param.shape.strip("[]").split(", "):
        value = 1
        for factor in dim.split("*"):
            if not factor.isdigit() and factor not in sizes:
                raise UsageError(
                    f"input {param.name} of {SCHEMA.qualified_name} needs input "
                    f"{_SIZE_SOURCES[factor][0]} (it gives {factor})"
                )
            value *= int(factor) if factor.isdigit() else sizes[factor]
        dims.append(value)
    return tuple(dims)


def _check_attributes_fit(a: Mapping[str, object], experts: int) -> None:
    """The attribute constraints that depend on the number of experts E."""
    name = SCHEMA.qualified_name
    k, n_group = a["k"], a["n_group"]
    if k > experts:
        raise UsageError(f"invalid attribute k={k} for {name}: must be <= E={experts} (router_weight's experts)")
    if experts % n_group:
        raise UsageError(f"invalid attribute n_group={n_group} for {name}: must divide E={experts}")
    per_group = experts // n_group
    if n_group > 1 and a["group_score"] == "top2_sum" and per_group < 2:
        raise UsageError(
            f"group_score='top2_sum' for {name} needs groups of at least 2 experts, "
            f"but E={experts} / n_group={n_group} = {per_group}; use group_score='max' or fewer groups"
        )
    kept = a.get("topk_group", n_group) * per_group
    if k > kept:
        raise UsageError(
            f"invalid attribute k={k} for {name}: must be <= topk_group * E / n_group = {kept} "
            f"(the experts in the kept groups)"
        )
