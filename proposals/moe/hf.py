"""transformers v5 MoE blocks -> a model holding one MoE node (``from_transformers``).

Each supported family is one small reader that maps the block's router, experts
and shared expert onto the op's inputs and attributes. A block the op cannot
represent raises :class:`generator.errors.UsageError` naming the feature.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx

from generator.errors import UsageError
from proposals.moe.build import moe_model

# transformers' hidden_act names -> the op's activation
_ACTIVATIONS = {
    "silu": "silu",
    "swish": "silu",
    "gelu": "gelu",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_new": "gelu_tanh",
    "relu": "relu",
}


def _np(tensor) -> np.ndarray:
    """A parameter or buffer as a float32 numpy array (the zoo and the op compute in T=float)."""
    return tensor.detach().float().cpu().numpy()


def _activation(hidden_act: str) -> str:
    if hidden_act not in _ACTIVATIONS:
        raise UsageError(f"expert activation {hidden_act!r} is not supported by MoE; valid: {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[hidden_act]


def _interleave(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """[..., I] gate and up -> [..., 2I] with gate on even and up on odd columns."""
    return np.stack([gate, up], axis=-1).reshape(*gate.shape[:-1], -1)


def _stacked_experts(experts) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """Inputs and attributes from a ``@use_experts_implementation`` experts module."""
    if getattr(experts, "has_post_expert_norm", False):
        raise UsageError("a norm after each expert (has_post_expert_norm) is not supported by MoE")
    gated = getattr(experts, "has_gate", True)
    fc1 = _np(experts.gate_up_proj if gated else experts.up_proj)
    fc2 = _np(experts.down_proj)
    if not getattr(experts, "is_transposed", False):  # stored [E, out, in]: the op wants [E, in, out]
        fc1, fc2 = fc1.transpose(0, 2, 1), fc2.transpose(0, 2, 1)
    arrays = {"fc1_weight": np.ascontiguousarray(fc1), "fc2_weight": np.ascontiguousarray(fc2)}
    if getattr(experts, "has_bias", False):
        arrays["fc1_bias"] = _np(experts.gate_up_proj_bias if gated else experts.up_proj_bias)
        arrays["fc2_bias"] = _np(experts.down_proj_bias)
    attrs = {
        "activation": _activation(experts.config.hidden_act),
        "gated": int(gated),
        "gate_up_layout": "concatenated" if getattr(experts, "is_concatenated", True) else "interleaved",
    }
    return arrays, attrs


def _shared_mlp(mlp, attrs: dict, gate=None) -> dict[str, np.ndarray]:
    """A gate_proj/up_proj/down_proj MLP as the op's shared expert (same act as the experts)."""
    if any(m.bias is not None for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)):
        raise UsageError("a shared expert with biases is not supported by MoE")
    g, u = _np(mlp.gate_proj.weight).T, _np(mlp.up_proj.weight).T
    fc1 = np.concatenate([g, u], 1) if attrs["gate_up_layout"] == "concatenated" else _interleave(g, u)
    arrays = {
        "shared_fc1_weight": np.ascontiguousarray(fc1),
        "shared_fc2_weight": np.ascontiguousarray(_np(mlp.down_proj.weight).T),
    }
    if gate is not None:
        if gate.bias is not None:
            raise UsageError("a shared-expert gate with a bias is not supported by MoE")
        arrays["shared_gate_weight"] = np.ascontiguousarray(_np(gate.weight).T)
    return arrays


def _router_weight(router) -> dict[str, np.ndarray]:
    return {"router_weight": np.ascontiguousarray(_np(router.weight).T)}


# --8<-- [start:families]
def _softmax_topk(block):
    """Mixtral, Qwen2-MoE, Qwen3-MoE, Qwen3-Next, OLMoE, FlexOlmo, Jamba: softmax -> top-k
    (-> renormalize), plus Qwen's sigmoid-gated shared expert."""
    arrays, attrs = _stacked_experts(block.experts)
    router = block.gate if hasattr(block, "gate") else block.router  # Jamba calls it router
    arrays |= _router_weight(router)
    # Mixtral's router always renormalizes, Jamba's never; the others follow norm_topk_prob
    always = type(block).__name__.startswith("Mixtral")
    normalize = always or bool(getattr(router, "norm_topk_prob", False))
    attrs |= {"k": router.top_k, "normalize_routing_weights": int(normalize)}
    if hasattr(block, "shared_expert"):
        arrays |= _shared_mlp(block.shared_expert, attrs, block.shared_expert_gate)
    return arrays, attrs


def _deepseek_v3(block):
    """DeepSeek-V3, GLM-4.5-MoE, dots1: sigmoid, selection-only bias, group-limited top-k
    with top-2-sum group scores, optional renormalization, routed scaling, shared experts."""
    arrays, attrs = _stacked_experts(block.experts)
    gate = block.gate
    arrays |= _router_weight(gate) | {"selection_bias": _np(gate.e_score_correction_bias)}
    attrs |= {
        "k": gate.top_k,
        "scoring": "sigmoid",
        "normalize_routing_weights": int(bool(gate.norm_topk_prob)),
        "routed_scaling_factor": float(gate.routed_scaling_factor),
        "n_group": gate.num_group,
        "topk_group": gate.topk_group,
        "group_score": "top2_sum",
    }
    return arrays | _shared_mlp(block.shared_experts, attrs), attrs


def _deepseek_v2(block):
    """DeepSeek-V2: softmax, greedy or group-limited (max group score) top-k, no
    renormalization, routed scaling, shared experts."""
    arrays, attrs = _stacked_experts(block.experts)
    gate = block.gate
    arrays |= _router_weight(gate)
    attrs |= {"k": gate.top_k, "routed_scaling_factor": float(gate.routed_scaling_factor)}
    if gate.topk_method == "group_limited_greedy":
        attrs |= {"n_group": gate.num_group, "topk_group": gate.topk_group, "group_score": "max"}
    elif gate.topk_method != "greedy":
        raise UsageError(
            f"DeepSeek-V2 topk_method {gate.topk_method!r} is not supported by MoE; valid: greedy, group_limited_greedy"
        )
    return arrays | _shared_mlp(block.shared_experts, attrs), attrs


def _minimax_m2(block):
    """MiniMax-M2: sigmoid, selection-only bias, renormalized."""
    arrays, attrs = _stacked_experts(block.experts)
    arrays |= _router_weight(block.gate) | {"selection_bias": _np(block.e_score_correction_bias)}
    attrs |= {"k": block.gate.top_k, "scoring": "sigmoid", "normalize_routing_weights": 1}
    return arrays, attrs


def _ernie4_5(block):
    """ERNIE-4.5-MoE: softmax, selection-only bias, renormalized (the sum clamped at
    moe_norm_min, 1e-12, which only matters when every selected score is ~0), shared experts."""
    arrays, attrs = _stacked_experts(block.experts)
    bias = _np(block.gate.moe_statics.e_score_correction_bias).reshape(-1)
    arrays |= _router_weight(block.gate) | {"selection_bias": bias}
    attrs |= {"k": block.gate.top_k, "normalize_routing_weights": 1}
    if block.shared_experts is not None:
        arrays |= _shared_mlp(block.shared_experts, attrs)
    return arrays, attrs


def _gpt_oss(block):
    """GPT-OSS: router bias, softmax over the top-k logits (= softmax -> top-k -> renormalize),
    interleaved clamped SwiGLU with (up + 1), expert biases, [in, out] weights."""
    experts = block.experts
    arrays = {
        "fc1_weight": _np(experts.gate_up_proj),
        "fc1_bias": _np(experts.gate_up_proj_bias),
        "fc2_weight": _np(experts.down_proj),
        "fc2_bias": _np(experts.down_proj_bias),
        "router_weight": np.ascontiguousarray(_np(block.router.weight).T),
        "router_bias": _np(block.router.bias),
    }
    attrs = {
        "k": block.router.top_k,
        "normalize_routing_weights": 1,
        "activation": "silu",
        "gate_up_layout": "interleaved",
        "activation_alpha": float(experts.alpha),
        "activation_beta": 1.0,
        "swiglu_limit": float(experts.limit),
    }
    return arrays, attrs


def _llama4(block):
    """Llama 4: sigmoid of the top-k logits applied to the expert *input*, [in, out]
    concatenated gate/up weights, one ungated shared expert. transformers runs every
    expert densely on zero-weighted inputs; with no expert biases those add nothing,
    so the op's sparse semantics give the same output."""
    experts = block.experts
    attrs = {
        "k": block.router.top_k,
        "scoring": "sigmoid",
        "apply_weight_on_input": 1,
        "activation": _activation(block.shared_expert.config.hidden_act),
    }
    arrays = {"fc1_weight": _np(experts.gate_up_proj), "fc2_weight": _np(experts.down_proj)}
    arrays |= _router_weight(block.router)
    return arrays | _shared_mlp(block.shared_expert, attrs | {"gate_up_layout": "concatenated"}), attrs


def _unsupported(feature: str) -> Callable:
    def reader(block):
        raise UsageError(f"{type(block).__name__} is not supported by MoE: {feature}")

    return reader


FAMILIES: dict[str, Callable] = {
    "MixtralSparseMoeBlock": _softmax_topk,
    "Qwen2MoeSparseMoeBlock": _softmax_topk,
    "Qwen3MoeSparseMoeBlock": _softmax_topk,
    "Qwen3NextSparseMoeBlock": _softmax_topk,
    "OlmoeSparseMoeBlock": _softmax_topk,
    "FlexOlmoSparseMoeBlock": _softmax_topk,
    "JambaSparseMoeBlock": _softmax_topk,
    "DeepseekV3MoE": _deepseek_v3,
    "Glm4MoeMoE": _deepseek_v3,
    "Dots1MoE": _deepseek_v3,
    "Ernie4_5_MoeSparseMoeBlock": _ernie4_5,
    "DeepseekV2Moe": _deepseek_v2,
    "MiniMaxM2SparseMoeBlock": _minimax_m2,
    "GptOssMLP": _gpt_oss,
    "Llama4TextMoe": _llama4,
    "PhimoeSparseMoeBlock": _unsupported(
        "sparsemixer routing (two rounds of masked softmax with jitter_eps) is not a score function of the op"
    ),
}
# --8<-- [end:families]


def block_arrays(block) -> tuple[dict[str, np.ndarray], dict[str, object]]:
    """The op's inputs (except X) and attributes for a transformers MoE block."""
    name = type(block).__name__
    if name not in FAMILIES:
        raise UsageError(
            f"{name} is not a known transformers MoE block; supported: "
            f"{sorted(k for k, v in FAMILIES.items() if v.__name__ != 'reader')}"
        )
    return FAMILIES[name](block)


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
