"""transformers v5 MoE blocks -> a model holding one MoE node (``from_transformers``).

No list of class names: a block is read from the building blocks transformers v5 composes
every MoE family from, and its semantics are *measured*, not assumed.

1. **Structure.** The experts are the child holding stacked 3-D ``gate_up_proj`` (or
   ``up_proj`` when not gated) and ``down_proj`` tensors, with the flags that
   ``@use_experts_implementation`` sets (``is_transposed``, ``is_concatenated``,
   ``has_bias``, ``has_gate``). The router is the one ``[E, H]`` matrix outside the
   experts (with its ``[E]`` bias if its Linear has one); any other ``[E]`` tensor is a
   candidate selection-only bias. A shared expert is a child with
   ``gate_proj``/``up_proj``/``down_proj`` Linears; a ``Linear(H -> 1)`` next to it is
   its sigmoid gate.
2. **Behaviour.** A float64 copy of the block runs on probe tokens with a hook on the
   experts module, which records the routing decision (``top_k_index``,
   ``top_k_weights``) and the routed output. The op's attributes are the first candidate
   (score function, renormalization, selection bias, group-limited selection from the
   config's ``n_group``/``topk_group``, group score) whose numpy reference reproduces the
   recorded selection and weights; the routed scaling factor is the measured ratio. The
   expert activation is the candidate that reproduces the routed output; the block output
   must then equal ``scale * routed + shared``.
3. **Refusal.** Blocks whose semantics are not the op's are refused with the semantic
   reason (:data:`SEMANTIC_REFUSALS`), found from the config or the module structure.
"""

from __future__ import annotations

import copy
import inspect
import itertools
from collections.abc import Mapping

import numpy as np
import onnx

from generator.errors import UsageError
from generator.onnx_build import seeded
from generator.torch_reference import float64_mode
from proposals.moe import reference
from proposals.moe.build import moe_model
from proposals.moe.schema import resolve

# transformers' hidden_act names -> the op's activation
_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "relu": "relu",
}
_PROBE_TOKENS = 48
_FIT_RTOL = 2e-5  # the routers compute in float32 even in a float64 copy


def _np(tensor) -> np.ndarray:
    """A parameter or buffer as a float64 numpy array."""
    return tensor.detach().double().cpu().numpy()


def _f32(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: np.ascontiguousarray(v, dtype=np.float32) for n, v in arrays.items()}


def _interleave(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """[..., I] gate and up -> [..., 2I] with gate on even and up on odd columns."""
    return np.stack([gate, up], axis=-1).reshape(*gate.shape[:-1], -1)


def _config(block):
    children = [getattr(block, n, None) for n in ("experts", "gate", "router")]
    for owner in (block, *children):
        if getattr(owner, "config", None) is not None:
            return owner.config
    return None


def _cfg(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


# --8<-- [start:refusals]
def _refusal(block, config) -> str | None:
    """The semantic reason a block is not the op, read from its config and structure."""
    router = next((m for n, m in block.named_children() if n in ("gate", "router")), None)
    router_src = inspect.getsource(type(router).forward) if router is not None else ""

    def field(*names):  # a config field, or the same name kept on the block
        return _cfg(config, *names, default=_cfg(block, *names))

    checks = (
        (
            "sparsemixer" in router_src,
            "sparsemixer routing (two rounds of masked softmax with jitter_eps) is not a score function of the op",
        ),
        (
            bool(_cfg(config, "zero_expert_num", default=0)),
            f"{_cfg(config, 'zero_expert_num')} identity ('zero-compute') experts (zero_expert_num) return the "
            "token itself, which is not an FFN expert of the op",
        ),
        (
            _cfg(config, "expert_capacity", "capacity_factor") is not None,
            "capacity-based routing drops tokens beyond each expert's capacity (data-dependent), not top-k",
        ),
        (
            field("moe_normalize_expert_weights") is not None,
            f"routing weights divided by their L_p norm (p = moe_normalize_expert_weights = "
            f"{field('moe_normalize_expert_weights')}) and experts stored as 2D w1/v1/w2, not the op's "
            "sum renormalization over stacked experts",
        ),
        (
            hasattr(router, "tid2eid"),
            "hash routing: the experts come from a token-id table (tid2eid), not from the hidden state",
        ),
        (
            router is not None and hasattr(router, "router_mlp"),
            "the router is an MLP (down_proj + router_mlp) carrying state across layers, and it has a skip "
            "expert; the op's router is one linear projection",
        ),
        (
            float(_cfg(config, "moe_router_logit_softcapping", "router_logit_softcapping", default=0.0) or 0.0) > 0,
            "router logits are soft-capped (tanh(logits / c) * c), which the op's score functions do not include",
        ),
        (
            _cfg(config, "mlp_hidden_act", "hidden_act") == "relu2",
            "expert activation 'relu2' (squared ReLU) is not an activation of the op",
        ),
        (
            getattr(getattr(block, "experts", None), "has_post_expert_norm", False),
            "a norm after each expert (has_post_expert_norm) is not part of the op's expert FFN",
        ),
        (
            hasattr(block, "kv_proj") or type(getattr(block, "experts", None)).__name__.endswith("MoA"),
            "mixture of attention heads (MoA): the routed experts are attention query/output projections, "
            "not FFN experts",
        ),
        (
            any(type(m).__name__.endswith("Norm") for m in block.children()),
            "a norm is applied to the block output ("
            + ", ".join(n for n, m in block.named_children() if type(m).__name__.endswith("Norm"))
            + "), outside the op",
        ),
        (
            type(getattr(block, "fc1_latent_proj", None)).__name__ == "Linear",
            "the experts run in a latent space (fc1_latent_proj / fc2_latent_proj around them)",
        ),
    )
    return next((reason for hit, reason in checks if hit), None)


# --8<-- [end:refusals]


def _find_experts(block):
    for _, child in block.named_children():
        if hasattr(child, "down_proj") and (hasattr(child, "gate_up_proj") or hasattr(child, "up_proj")):
            if getattr(child.down_proj, "ndim", 0) == 3:
                return child
    return None


def _experts_arrays(experts) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """fc1/fc2 weights ([E, in, out]) and biases from a stacked experts module."""
    gated = bool(getattr(experts, "has_gate", True)) and hasattr(experts, "gate_up_proj")
    fc1 = _np(experts.gate_up_proj if gated else experts.up_proj)
    fc2 = _np(experts.down_proj)
    if not getattr(experts, "is_transposed", False):  # stored [E, out, in]: the op wants [E, in, out]
        fc1, fc2 = fc1.transpose(0, 2, 1), fc2.transpose(0, 2, 1)
    arrays = {"fc1_weight": fc1, "fc2_weight": fc2}
    if getattr(experts, "has_bias", False):
        arrays["fc1_bias"] = _np(experts.gate_up_proj_bias if gated else experts.up_proj_bias)
        arrays["fc2_bias"] = _np(experts.down_proj_bias)
    layout = "concatenated" if getattr(experts, "is_concatenated", True) else "interleaved"
    return arrays, {"gated": int(gated), "gate_up_layout": layout}


def _shared_modules(block, experts) -> tuple[object | None, object | None]:
    """The shared-expert MLP and its Linear(H -> 1) sigmoid gate, if the block has them."""
    import torch

    mlp = gate = None
    for _, child in block.named_children():
        if child is experts:
            continue
        if all(isinstance(getattr(child, p, None), torch.nn.Linear) for p in ("gate_proj", "up_proj", "down_proj")):
            mlp = child
        elif isinstance(child, torch.nn.Linear) and child.out_features == 1:
            gate = child
    return mlp, gate


def _shared_arrays(mlp, gate, layout: str) -> dict[str, np.ndarray]:
    if any(m.bias is not None for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)):
        raise UsageError("a shared expert with biases is not supported by MoE")
    g, u = _np(mlp.gate_proj.weight).T, _np(mlp.up_proj.weight).T
    fc1 = np.concatenate([g, u], 1) if layout == "concatenated" else _interleave(g, u)
    arrays = {"shared_fc1_weight": fc1, "shared_fc2_weight": _np(mlp.down_proj.weight).T}
    if gate is not None:
        if gate.bias is not None:
            raise UsageError("a shared-expert gate with a bias is not supported by MoE")
        arrays["shared_gate_weight"] = _np(gate.weight).T
    return arrays


def _router_tensors(block, experts, shared, experts_count: int, hidden: int):
    """The router matrix [E, H], its bias [E] if any, and candidate selection biases [E]."""
    skip = {id(t) for m in (experts, *shared) if m is not None for t in m.parameters()}
    named = [(n, t) for n, t in [*block.named_parameters(), *block.named_buffers()] if id(t) not in skip]
    matrices = [(n, t) for n, t in named if tuple(t.shape) == (experts_count, hidden)]
    if len(matrices) != 1:
        found = [(n, tuple(t.shape)) for n, t in named]
        raise UsageError(f"no single [E={experts_count}, H={hidden}] router matrix outside the experts; found {found}")
    weight_name, weight = matrices[0]
    prefix = weight_name.rsplit(".", 1)[0] if "." in weight_name else ""
    vectors = [(n, t.reshape(-1)) for n, t in named if t.numel() == experts_count and t.is_floating_point()]
    vectors = [(n, t) for n, t in vectors if tuple(t.shape) == (experts_count,)]
    bias_name = f"{prefix}.bias" if prefix else "bias"
    bias = next((t for n, t in vectors if n == bias_name), None)
    selection = [t for n, t in vectors if n != bias_name]
    return _np(weight), (None if bias is None else _np(bias)), [_np(t) for t in selection]


def _record(block, x: np.ndarray):
    """Run ``block`` on x; return (output, experts' (inputs, index, weights), experts' output)."""
    import torch

    seen = {}

    def pre(_, args, kwargs):
        seen["args"] = [*args, *kwargs.values()]

    def post(_, __, output):
        seen["out"] = output

    experts = _find_experts(block)
    handles = [
        experts.register_forward_pre_hook(pre, with_kwargs=True),
        experts.register_forward_hook(post),
    ]
    try:
        with float64_mode():  # a block that asks for float32 (Inkling2's router) still runs in float64
            out = block(torch.from_numpy(x))
    finally:
        for h in handles:
            h.remove()
    out = out[0] if isinstance(out, tuple) else out
    args = [a.detach().double().numpy() if a.is_floating_point() else a.numpy() for a in seen["args"]]
    return out.double().numpy().reshape(x.shape), args, seen["out"].double().numpy().reshape(-1, x.shape[-1])


def _routing_candidates(config, experts_count: int, selection: list, router_bias):
    n_group = int(_cfg(config, "n_group", "num_expert_group", default=1) or 1)
    topk_group = int(_cfg(config, "topk_group", default=n_group) or n_group)
    groups = [(1, None)] if n_group <= 1 or experts_count % n_group else [(n_group, "top2_sum"), (n_group, "max")]
    if n_group > 1:
        groups.append((1, None))  # a config field the router does not use (DeepSeek-V2 greedy)
    for scoring, bias, (ng, score), normalize in itertools.product(
        ("softmax", "sigmoid"), [None, *selection], groups, (1, 0)
    ):
        attrs = {"scoring": scoring, "normalize_routing_weights": normalize, "n_group": ng}
        if ng > 1:
            attrs |= {"topk_group": topk_group, "group_score": score}
        arrays = {} if bias is None else {"selection_bias": bias}
        if router_bias is not None:
            arrays["router_bias"] = router_bias
        yield attrs, arrays


def _fit_routing(x, idx, w, router_weight, config, selection, router_bias):
    """The routing attributes (and bias arrays) that reproduce the recorded selection."""
    k = idx.shape[1]
    experts_count = router_weight.shape[0]
    best = None
    for attrs, arrays in _routing_candidates(config, experts_count, selection, router_bias):
        trial = {"router_weight": router_weight.T, **arrays}
        try:
            a = resolve(attrs | {"k": k})
            routes = [reference.route(row, trial, a) for row in x]
        except UsageError:
            continue
        same_sets = all(set(r[0].tolist()) == set(i.tolist()) for r, i in zip(routes, idx, strict=True))
        if not same_sets:
            continue
        ours = np.stack([r[1][np.argsort(r[0])] for r in routes])
        theirs = np.take_along_axis(w, np.argsort(idx, axis=1), axis=1)
        scale = float(np.sum(ours * theirs) / np.sum(ours * ours))
        err = float(np.abs(ours * scale - theirs).max() / max(np.abs(theirs).max(), 1e-30))
        if err < _FIT_RTOL:
            return attrs | {"k": k, "routed_scaling_factor": scale}, arrays
        best = best or f"selection matches with {attrs} but weights differ by {err:.1e} (relative)"
    if selection and _selects_on_biased_logits(x, idx, router_weight, selection):
        raise UsageError(
            "MoE cannot represent this router: the selection bias is added to the router logits, "
            "not to the scores (the op's selection_bias): "
            "top-k(logits + bias) differs from top-k(sigmoid(logits) + bias)"
        )
    raise UsageError(
        "MoE cannot represent this router: routing matches none of the op's score functions "
        "(softmax/sigmoid, renormalization, selection bias, group-limited selection): "
        + (best or "the selected experts differ")
    )


def _selects_on_biased_logits(x, idx, router_weight, selection) -> bool:
    logits = x @ router_weight.T
    for bias in selection:
        top = np.argsort(-(logits + bias), axis=1, kind="stable")[:, : idx.shape[1]]
        if all(set(a.tolist()) == set(b.tolist()) for a, b in zip(top, idx, strict=True)):
            return True
    return False


def _routed(x, idx, w, arrays, attrs) -> np.ndarray:
    a = resolve(attrs | {"k": idx.shape[1]})
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        for e, wt in zip(idx[t], w[t], strict=True):
            out[t] += wt * reference.expert(x[t], int(e), arrays, a)
    return out


def _activation_candidates(experts, config):
    hidden_act = _cfg(config, "hidden_act", default="silu")
    first = _ACTIVATIONS.get(hidden_act)
    names = [first] if first else []
    names += [n for n in ("silu", "gelu", "gelu_tanh", "relu") if n not in names]
    alpha = float(getattr(experts, "alpha", 1.0))
    limit = getattr(experts, "limit", None)
    for name in names:
        for beta in (0.0, 1.0):
            attrs = {"activation": name, "activation_alpha": alpha, "activation_beta": beta}
            yield attrs if limit is None else attrs | {"swiglu_limit": float(limit)}


def _fit_experts(experts, config, x, idx, w, routed, arrays, layout_attrs):
    hidden_act = _cfg(config, "hidden_act")
    if hidden_act is not None and hidden_act not in _ACTIVATIONS:
        raise UsageError(f"expert activation {hidden_act!r} is not supported by MoE; valid: {sorted(_ACTIVATIONS)}")
    scale = max(float(np.abs(routed).max()), 1e-30)
    for act in _activation_candidates(experts, config):
        attrs = layout_attrs | act
        if float(np.abs(_routed(x, idx, w, arrays, attrs) - routed).max()) / scale < _FIT_RTOL:
            return attrs
    raise UsageError("the experts' output matches no activation of the op (silu, gelu, gelu_tanh, relu)")


def _llama4_style(block, experts, config) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Experts whose forward takes only the tokens: the router scores scale the expert
    *input* and every expert runs densely (Llama 4). With no expert biases the
    zero-weighted inputs add nothing, so the op's sparse semantics give the same output."""
    mlp, _ = _shared_modules(block, experts)
    router = block.router
    attrs = {
        "k": router.top_k,
        "scoring": "sigmoid",
        "apply_weight_on_input": 1,
        "activation": _ACTIVATIONS.get(_cfg(config, "hidden_act"), "silu"),
    }
    arrays = {"fc1_weight": _np(experts.gate_up_proj), "fc2_weight": _np(experts.down_proj)}
    arrays["router_weight"] = _np(router.weight).T
    if mlp is not None:
        arrays |= _shared_arrays(mlp, None, "concatenated")
    return arrays, attrs


def _probe(block, hidden: int) -> tuple[object, np.ndarray]:
    """A float64 copy of the block and probe tokens [1, T, H]."""
    probe_block = copy.deepcopy(block).double().eval()
    for module in probe_block.modules():  # the copy's own config: grouped_mm has no float64 kernel
        if getattr(module, "config", None) is not None and hasattr(module.config, "_experts_implementation"):
            module.config._experts_implementation = "eager"
    return probe_block, seeded(11).randn(1, _PROBE_TOKENS, hidden)


def _combine(rest, routed, shared) -> tuple[float, float]:
    """Least-squares a, b with rest = a * routed + b * shared (b = 1 without a shared expert)."""
    if not shared.any():
        return float(np.sum(routed * rest) / max(np.sum(routed * routed), 1e-300)), 1.0
    basis = np.stack([routed.reshape(-1), shared.reshape(-1)], axis=1)
    (a, b), *_ = np.linalg.lstsq(basis, rest.reshape(-1), rcond=None)
    return float(a), float(b)


# --8<-- [start:recognise]
def block_arrays(block) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """The op's inputs (except X, float32) and attributes for a transformers MoE block."""
    config = _config(block)
    reason = _refusal(block, config)
    if reason:
        raise UsageError(f"{type(block).__name__} is not supported by MoE: {reason}")
    experts = _find_experts(block)
    if experts is None:
        raise UsageError(
            f"{type(block).__name__} is not a transformers v5 MoE block: no child holds stacked 3-D "
            "gate_up_proj/up_proj and down_proj expert weights"
        )
    if len(inspect.signature(experts.forward).parameters) == 1:
        arrays, attrs = _llama4_style(block, experts, config)
        return _f32(arrays), attrs
    arrays, layout = _experts_arrays(experts)
    experts_count, hidden = arrays["fc1_weight"].shape[:2]
    mlp, gate = _shared_modules(block, experts)
    router_weight, router_bias, selection = _router_tensors(block, experts, (mlp, gate), experts_count, hidden)
    probe_block, x = _probe(block, hidden)
    out, (xe, idx, w), routed = _record(probe_block, x)
    tokens = x.reshape(-1, hidden)
    if xe.shape != tokens.shape or not np.allclose(xe, tokens, rtol=1e-12, atol=0):
        raise UsageError(f"{type(block).__name__} is not supported by MoE: the experts' input is not the block input")
    arrays64 = _experts_arrays(_find_experts(probe_block))[0]
    attrs = _fit_experts(experts, config, tokens, idx, w, routed, arrays64, layout)
    route_attrs, route_arrays = _fit_routing(tokens, idx, w, router_weight, config, selection, router_bias)
    arrays |= route_arrays | {"router_weight": router_weight.T}
    if mlp is not None:
        arrays |= _shared_arrays(mlp, gate, attrs["gate_up_layout"])
    rest = out.reshape(-1, hidden)
    # the block may scale the routed sum again after the experts (Laguna): measure it
    shared = np.zeros_like(rest)
    if mlp is not None:
        shared64 = _shared_arrays(*_shared_modules(probe_block, _find_experts(probe_block)), attrs["gate_up_layout"])
        a = resolve(attrs | route_attrs)
        shared = np.stack([reference.shared(t, shared64, a) for t in tokens])
    after, shared_scale = _combine(rest, routed, shared)
    err = float(np.abs(after * routed + shared_scale * shared - rest).max() / max(np.abs(rest).max(), 1e-30))
    if err > _FIT_RTOL:
        raise UsageError(
            f"{type(block).__name__} is not supported by MoE: its output is not scale * routed experts + shared "
            f"expert (relative difference {err:.1e}); it computes something else around the experts"
        )
    route_attrs["routed_scaling_factor"] *= after
    if mlp is not None and abs(shared_scale - 1.0) > 1e-9:  # Cohere2-MoE "average": fold into fc2
        arrays["shared_fc2_weight"] = arrays["shared_fc2_weight"] * shared_scale
    if abs(route_attrs["routed_scaling_factor"] - 1.0) < 1e-6:
        del route_attrs["routed_scaling_factor"]
    return _f32(arrays), attrs | route_attrs


# --8<-- [end:recognise]


def is_moe_block(module) -> bool:
    """Whether ``module`` is a transformers v5 MoE block (holds stacked experts)."""
    return _find_experts(module) is not None


def from_transformers(block) -> onnx.ModelProto:
    """A model with one MoE node computing ``block(hidden_states)``'s hidden-states output.

    Input ``hidden_states`` [batch, sequence, hidden] float32, output ``output`` of the
    same shape; the block's weights become initializers.
    """
    arrays, attrs = block_arrays(block)
    hidden = arrays["router_weight"].shape[0]
    x = np.zeros((1, 1, hidden), np.float32)
    model = moe_model({"X": x, **arrays}, attrs, dynamic=True, io_names={"X": "hidden_states", "Y": "output"})
    return model
