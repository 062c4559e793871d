"""Zoo cases of the MoE function-op proposal.

Family cases: a tiny seeded transformers block converted by ``from_transformers``;
expected outputs come from the transformers module itself, run on a float64 copy
(:func:`proposals.moe.families.reference_output`). Edge cases: expected
outputs come from the numpy reference (:mod:`proposals.moe.reference`). Every
model's X has symbolic leading axes, and most cases run a prefill-sized and a
decode-sized data set through the same model: the first makes experts repeat
(GroupedMatMul's per-group Loop), the second does not (its per-slot Gather).
"""

from __future__ import annotations

import numpy as np

from generator.onnx_build import seeded
from generator.registry import Case, DataSet, case
from proposals.moe.build import moe_model
from proposals.moe.families import reference_output, tiny_block
from proposals.moe.hf import from_transformers
from proposals.moe.reference import moe, route

# transformers computes in float32 in another order; the body's sums differ in rounding
RTOL, ATOL = 1e-4, 1e-5
HIDDEN = 16


def _family(family: str) -> Case:
    """Block output of a tiny transformers block, prefill [2, 3, H] then decode [1, 1, H]."""
    block = tiny_block(family, seed=0)
    rng = seeded(1)
    datasets = []
    for shape in ((2, 3, HIDDEN), (1, 1, HIDDEN)):
        x = rng.randn(*shape).astype(np.float32)
        datasets.append(DataSet({"hidden_states": x}, {"output": reference_output(block, x)}))
    return Case(from_transformers(block), datasets, rtol=RTOL, atol=ATOL)


@case
def mixtral():
    """Mixtral block: softmax, top-2, renormalized, SiLU-GLU experts."""
    return _family("mixtral")


@case
def qwen2_moe():
    """Qwen2-MoE block: softmax top-2 without renormalization, sigmoid-gated shared expert."""
    return _family("qwen2_moe")


@case
def qwen3_moe():
    """Qwen3-MoE block: softmax, top-2 of 8, renormalized (norm_topk_prob)."""
    return _family("qwen3_moe")


@case
def deepseek_v3():
    """DeepSeek-V3 block: sigmoid, selection-only bias, 2 of 4 groups, scale 2.5, shared expert."""
    return _family("deepseek_v3")


@case
def gpt_oss():
    """GPT-OSS block: router bias, interleaved clamped SwiGLU (alpha 1.702, limit 7, up + 1)."""
    return _family("gpt_oss")


@case
def llama4():
    """Llama 4 block: top-1 sigmoid weight applied to the expert input, shared expert."""
    return _family("llama4")


@case
def olmoe():
    """OLMoE block: softmax, top-3 of 6, no renormalization."""
    return _family("olmoe")


@case
def qwen3_next():
    """Qwen3-Next block: softmax top-2 renormalized, sigmoid-gated shared expert."""
    return _family("qwen3_next")


@case
def deepseek_v2():
    """DeepSeek-V2 block: softmax, group-limited top-3 (max group score), scale 1.5."""
    return _family("deepseek_v2")


@case
def glm4_moe():
    """GLM-4.5-MoE block: DeepSeek-V3 routing with 1 of 2 groups and top-3."""
    return _family("glm4_moe")


@case
def minimax_m2():
    """MiniMax-M2 block: sigmoid, selection-only bias, renormalized top-2."""
    return _family("minimax_m2")


@case
def dots1():
    """dots1 block: DeepSeek-V3 routing (sigmoid, selection bias, 1 of 2 groups), scale 1.5."""
    return _family("dots1")


@case
def ernie4_5_moe():
    """ERNIE-4.5-MoE block: softmax, selection-only bias, renormalized top-2, shared expert."""
    return _family("ernie4_5_moe")


@case
def flex_olmo():
    """FlexOlmo block: softmax top-2, renormalized."""
    return _family("flex_olmo")


@case
def jamba():
    """Jamba block: softmax top-2 without renormalization."""
    return _family("jamba")


def _surveyed(model_type: str) -> Case:
    """A block found by the coverage survey, with weights from the project RNG; expected
    outputs from a float64 copy of the block."""
    from proposals.moe.survey import block_output64
    from proposals.moe.survey import tiny_block as survey_block

    block = survey_block(model_type, seed=0)
    rng = seeded(1)
    datasets = []
    for shape in ((2, 3, HIDDEN), (1, 1, HIDDEN)):
        x = rng.randn(*shape)
        datasets.append(
            DataSet({"hidden_states": x.astype(np.float32)}, {"output": block_output64(block, x).astype(np.float32)})
        )
    return Case(from_transformers(block), datasets, rtol=RTOL, atol=ATOL)


@case
def laguna():
    """Laguna block: sigmoid with selection bias, renormalized, and a routed scaling the block
    applies after the experts (measured, folded into routed_scaling_factor), shared expert."""
    return _surveyed("laguna")


@case
def cohere2_moe_average():
    """Cohere2-MoE block: the shared expert and the routed sum are averaged, folded into
    routed_scaling_factor=0.5 and shared_fc2_weight * 0.5."""
    return _surveyed("cohere2_moe")


@case
def granitemoe():
    """Granite-MoE block: softmax over the top-k logits, which is softmax -> top-k -> renormalize."""
    return _surveyed("granitemoe")


def _weights(rng, experts: int, inter: int, *, gated: bool = True) -> dict[str, np.ndarray]:
    width = 2 * inter if gated else inter
    return {
        "router_weight": rng.randn(HIDDEN, experts).astype(np.float32),
        "fc1_weight": (rng.randn(experts, HIDDEN, width) * 0.5).astype(np.float32),
        "fc2_weight": (rng.randn(experts, inter, HIDDEN) * 0.5).astype(np.float32),
    }


def _reference_case(weights: dict[str, np.ndarray], attrs: dict, shapes) -> Case:
    """One MoE node; expected outputs from the numpy reference, one data set per X shape."""
    rng = seeded(7)
    datasets = []
    for shape in shapes:
        x = rng.randn(*shape, HIDDEN).astype(np.float32)
        datasets.append(DataSet({"X": x}, {"Y": moe({"X": x, **weights}, **attrs)}))
    model = moe_model({"X": datasets[0].inputs["X"], **weights}, attrs, dynamic=True)
    return Case(model, datasets, rtol=RTOL, atol=ATOL)


@case
def top1_gelu_biases():
    """k=1 (Switch-style): non-gated GELU experts with fc1/fc2 biases."""
    rng = seeded(10)
    weights = _weights(rng, 4, 12, gated=False)
    weights["fc1_bias"] = rng.randn(4, 12).astype(np.float32)
    weights["fc2_bias"] = rng.randn(4, HIDDEN).astype(np.float32)
    return _reference_case(weights, {"k": 1, "gated": 0, "activation": "gelu"}, [(6,), (1,)])


@case
def all_experts():
    """k=E: every token visits all 4 experts (dense), renormalized weights sum to 1."""
    weights = _weights(seeded(11), 4, 8)
    return _reference_case(weights, {"k": 4, "normalize_routing_weights": 1}, [(2, 3), (1, 1)])


@case
def single_token():
    """T=1 decode step through 8 experts, top-2: each selected expert runs once."""
    weights = _weights(seeded(12), 8, 8)
    return _reference_case(weights, {"k": 2}, [(1, 1)])


@case
def idle_expert():
    """An expert that receives no token: router_bias -30 keeps expert 2 out of every top-2."""
    weights = _weights(seeded(13), 4, 8)
    weights["router_bias"] = np.array([0.0, 0.0, -30.0, 0.0], np.float32)
    result = _reference_case(weights, {"k": 2}, [(8,)])
    x = result.datasets[0].inputs["X"]
    picked = {
        int(e)
        for row in x
        for e in route(
            row.astype(np.float64),
            weights,
            {"k": 2, "scoring": "softmax", "n_group": 1, "normalize_routing_weights": 0, "routed_scaling_factor": 1.0},
        )[0]
    }
    assert 2 not in picked and len(picked) == 3, picked  # the case tests what it says
    return result


@case
def shared_expert_only():
    """Only the shared expert contributes: routed experts' fc2 weights are all zero."""
    rng = seeded(14)
    weights = _weights(rng, 4, 8)
    weights["fc2_weight"] = np.zeros_like(weights["fc2_weight"])
    weights["shared_fc1_weight"] = (rng.randn(HIDDEN, 2 * 6) * 0.5).astype(np.float32)
    weights["shared_fc2_weight"] = (rng.randn(6, HIDDEN) * 0.5).astype(np.float32)
    weights["shared_gate_weight"] = rng.randn(HIDDEN, 1).astype(np.float32)
    return _reference_case(weights, {"k": 2}, [(5,), (1,)])


@case
def interleaved_gelu_tanh_clamped():
    """Interleaved gated gelu_tanh with swiglu_limit 0.5 and activation_beta 0.5."""
    weights = _weights(seeded(15), 4, 8)
    attrs = {
        "k": 2,
        "activation": "gelu_tanh",
        "gate_up_layout": "interleaved",
        "swiglu_limit": 0.5,
        "activation_beta": 0.5,
    }
    return _reference_case(weights, attrs, [(5,), (1,)])


@case
def grouped_max_relu():
    """Group-limited top-2 (max group score, 2 of 4 groups) with non-gated ReLU experts."""
    weights = _weights(seeded(16), 8, 8, gated=False)
    attrs = {"k": 2, "n_group": 4, "topk_group": 2, "group_score": "max", "gated": 0, "activation": "relu"}
    return _reference_case(weights, attrs, [(6,), (1,)])


@case
def float16():
    """float16 tensors (T = float16): top-2 renormalized, clamped SiLU-GLU, shared expert."""
    rng = seeded(17)
    weights = {n: a.astype(np.float16) for n, a in _weights(rng, 4, 8).items()}
    weights["shared_fc1_weight"] = (rng.randn(HIDDEN, 12) * 0.5).astype(np.float16)
    weights["shared_fc2_weight"] = (rng.randn(6, HIDDEN) * 0.5).astype(np.float16)
    attrs = {"k": 2, "normalize_routing_weights": 1, "swiglu_limit": 3.0}
    datasets = []
    for shape in ((5, HIDDEN), (1, HIDDEN)):
        x = rng.randn(*shape).astype(np.float16)
        datasets.append(DataSet({"X": x}, {"Y": moe({"X": x, **weights}, **attrs)}))
    model = moe_model({"X": datasets[0].inputs["X"], **weights}, attrs, dynamic=True)
    # float16 intermediates round at about 1e-3 relative; sums of ~16 products grow that
    return Case(model, datasets, rtol=2e-2, atol=2e-2)


# GroupedMatMul alone (onnx/onnx PR #8193): expected outputs from the numpy reference
# written from the RFC's text (proposals/moe/grouped_matmul.py).


def _grouped_matmul_case(x, weights, group_indices, bias=None, *, nd: bool = False) -> Case:
    from proposals.moe.grouped_matmul import grouped_matmul_model, reference, reference_nd

    inputs = {"input": x, "weights": weights, "group_indices": group_indices}
    if bias is not None:
        inputs["bias"] = bias
    expected = (reference_nd if nd else reference)(x, weights, group_indices, bias).astype(x.dtype)
    model = grouped_matmul_model(x, weights, group_indices, bias, nd=nd)
    return Case(model, [DataSet(inputs, {"output": expected})], rtol=RTOL, atol=ATOL)


@case
def grouped_matmul_rfc_top1():
    """GroupedMatMul, the RFC's test 1: k=1, 4 rows over 2 groups, no bias."""
    x = np.array([[1, 0, -1], [0, 1, 2], [1, 1, 0], [0, 0, 1]], np.float32)
    weights = np.array([[[1, 0], [0, 1], [-1, 0]], [[0, 1], [1, 0], [0, 1]]], np.float32)
    return _grouped_matmul_case(x, weights, np.array([[0], [1], [0], [1]], np.int64))


@case
def grouped_matmul_rfc_top2_bias():
    """GroupedMatMul, the RFC's test 2: k=2 over 3 groups with a per-group bias."""
    x = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    weights = np.array([[[1, 0], [0, 1]], [[0, 1], [1, 0]], [[1, 1], [0, 0]]], np.float32)
    bias = np.array([[0.1, 0.2], [0.3, 0.0], [0.5, 0.5]], np.float32)
    return _grouped_matmul_case(x, weights, np.array([[0, 1], [2, 0]], np.int64), bias)


@case
def grouped_matmul_empty_group():
    """GroupedMatMul, the RFC's test 3: group 1 of 3 is selected by no row (its weights are NaN)."""
    rng = seeded(20)
    weights = rng.randn(3, 2, 2).astype(np.float32)
    weights[1] = np.nan  # never read: a NaN would reach the output if it were
    return _grouped_matmul_case(rng.randn(4, 2).astype(np.float32), weights, np.array([[0], [0], [2], [2]], np.int64))


@case
def grouped_matmul_single_group():
    """GroupedMatMul, the RFC's test 4: G=1, every row selects group 0 (a plain MatMul)."""
    rng = seeded(21)
    x, weights = rng.randn(3, 4).astype(np.float32), rng.randn(1, 4, 5).astype(np.float32)
    return _grouped_matmul_case(x, weights, np.zeros((3, 1), np.int64))


@case
def grouped_matmul_repeated_groups():
    """GroupedMatMul with bias, 6 rows x top-2 of 4 groups: groups repeat."""
    rng = seeded(22)
    x, weights = rng.randn(6, 8).astype(np.float32), rng.randn(4, 8, 5).astype(np.float32)
    idx = np.array([[0, 3], [1, 0], [3, 2], [0, 1], [3, 0], [2, 1]], np.int64)
    return _grouped_matmul_case(x, weights, idx, rng.randn(4, 5).astype(np.float32))


@case
def grouped_matmul_nd_1d_indices():
    """GroupedMatMulND (the RFC's open point): k=1 as a 1-D group_indices [M]; output [M, N]."""
    rng = seeded(23)
    x, weights = rng.randn(5, 4).astype(np.float32), rng.randn(3, 4, 6).astype(np.float32)
    return _grouped_matmul_case(x, weights, np.array([2, 0, 2, 1, 0], np.int64), nd=True)


@case
def grouped_matmul_nd_batch():
    """GroupedMatMulND (the RFC's open point): batch axes, input [2, 3, K], indices [2, 3, 2], bias."""
    rng = seeded(24)
    x, weights = rng.randn(2, 3, 4).astype(np.float32), rng.randn(4, 4, 6).astype(np.float32)
    idx = rng.randint(0, 4, (2, 3, 2)).astype(np.int64)
    return _grouped_matmul_case(x, weights, idx, rng.randn(4, 6).astype(np.float32), nd=True)
