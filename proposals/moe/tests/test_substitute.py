"""com.microsoft.MoE substitution: where the semantics match, the substituted model's
outputs equal the inlined body's on onnxruntime; elsewhere the node stays, with a reason."""

from __future__ import annotations

import numpy as np
import pytest

from generator.onnx_build import seeded
from generator.ort import session
from proposals.moe.build import moe_model
from proposals.moe.families import SUPPORTED, tiny_block
from proposals.moe.hf import from_transformers
from proposals.moe.substitute import substitute

SUBSTITUTED = {"mixtral", "qwen2_moe", "qwen3_moe", "gpt_oss", "olmoe", "qwen3_next", "flex_olmo", "jamba"}
SELECTION_BIAS = "selection-only bias: MoE selects and weighs with the same scores (QMoE's router_weights could)"
LEFT_ALONE = {
    "deepseek_v3": SELECTION_BIAS,
    "glm4_moe": SELECTION_BIAS,
    "minimax_m2": SELECTION_BIAS,
    "dots1": SELECTION_BIAS,
    "ernie4_5_moe": SELECTION_BIAS,
    "deepseek_v2": "group-limited top-k has no MoE attribute",
    "llama4": "MoE weighs expert outputs, not inputs",
}


def _same_on_ort(model, substituted, x: np.ndarray, name: str) -> None:
    body = session(model, threads=1).run(None, {name: x})[0]
    kernel = session(substituted, threads=1).run(None, {name: x})[0]
    np.testing.assert_allclose(kernel, body, rtol=1e-5, atol=1e-5)


def test_every_family_is_classified() -> None:
    assert SUBSTITUTED | set(LEFT_ALONE) == set(SUPPORTED) and not SUBSTITUTED & set(LEFT_ALONE)


@pytest.mark.parametrize("family", sorted(SUBSTITUTED))
def test_substituted_families(family: str) -> None:
    model = from_transformers(tiny_block(family))
    substituted, report = substitute(model)
    assert report == {"moe": "com.microsoft.MoE"}
    ops = {(n.domain, n.op_type) for n in substituted.graph.node}
    assert ("com.microsoft", "MoE") in ops and not substituted.functions
    for shape in ((2, 5, 16), (1, 1, 16)):
        _same_on_ort(model, substituted, seeded(2).randn(*shape).astype(np.float32), "hidden_states")


@pytest.mark.parametrize("family", sorted(LEFT_ALONE))
def test_families_left_alone(family: str) -> None:
    """A node the kernel cannot compute stays as it was (the model is unchanged, byte for
    byte, functions included), and the report says why."""
    model = from_transformers(tiny_block(family))
    before = model.SerializeToString()
    substituted, report = substitute(model)
    assert report == {"moe": LEFT_ALONE[family]}
    assert substituted.SerializeToString() == before


ATTRS = [
    {"k": 2, "scoring": "sigmoid", "normalize_routing_weights": 1},  # via log(sigmoid)
    {"k": 1, "gated": 0, "activation": "gelu_tanh", "routed_scaling_factor": 2.5},
    {"k": 3, "gated": 0, "activation": "relu"},
    {
        "k": 2,
        "gate_up_layout": "interleaved",
        "swiglu_limit": 0.7,
        "activation_alpha": 1.702,
        "activation_beta": 1.0,
        "normalize_routing_weights": 1,
    },
]


@pytest.mark.parametrize("attrs", ATTRS, ids=lambda a: "-".join(f"{k}={v}" for k, v in a.items()))
def test_attribute_sets(attrs) -> None:
    rng = seeded(5)
    width = 6 if attrs.get("gated", 1) else 3
    arrays = {
        "X": rng.randn(7, 8).astype(np.float32),
        "router_weight": rng.randn(8, 4).astype(np.float32),
        "router_bias": rng.randn(4).astype(np.float32),
        "fc1_weight": rng.randn(4, 8, width).astype(np.float32),
        "fc1_bias": rng.randn(4, width).astype(np.float32),
        "fc2_weight": rng.randn(4, 3, 8).astype(np.float32),
        "fc2_bias": rng.randn(4, 8).astype(np.float32),
        "shared_fc1_weight": rng.randn(8, width).astype(np.float32),
        "shared_fc2_weight": rng.randn(3, 8).astype(np.float32),
        "shared_gate_weight": rng.randn(8, 1).astype(np.float32),
    }
    model = moe_model(arrays, attrs, dynamic=True)
    substituted, report = substitute(model)
    assert report == {"moe": "com.microsoft.MoE"}
    _same_on_ort(model, substituted, arrays["X"], "X")


def test_erf_gelu_is_left_alone() -> None:
    rng = seeded(6)
    arrays = {
        "X": rng.randn(3, 4).astype(np.float32),
        "router_weight": rng.randn(4, 2).astype(np.float32),
        "fc1_weight": rng.randn(2, 4, 3).astype(np.float32),
        "fc2_weight": rng.randn(2, 3, 4).astype(np.float32),
    }
    model = moe_model(arrays, {"k": 1, "gated": 0, "activation": "gelu"})
    substituted, report = substitute(model)
    assert report == {"moe": "erf GELU: MoE's gelu is the tanh approximation"}
    assert substituted.graph.node[0].op_type == "MoE" and substituted.functions
