"""Property tests: the numpy reference against the function body on onnx's
ReferenceEvaluator and on onnxruntime, over random attribute sets and shapes."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx.reference import ReferenceEvaluator

from generator.onnx_build import PROPOSAL_DOMAIN, seeded
from generator.ort import session
from proposals.moe.body import GroupedMatMul
from proposals.moe.build import moe_model
from proposals.moe.reference import moe
from proposals.moe.schema import ACTIVATIONS

RTOL, ATOL = 1e-4, 1e-4
SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def moe_configs(draw):
    """Attributes, present optional inputs and sizes of one random MoE node."""
    experts = draw(st.integers(1, 6))
    n_group = draw(st.sampled_from([d for d in range(1, experts + 1) if experts % d == 0]))
    topk_group = draw(st.integers(1, n_group))
    k = draw(st.integers(1, topk_group * (experts // n_group)))  # never pick a masked expert
    attrs = {
        "k": k,
        "scoring": draw(st.sampled_from(["softmax", "sigmoid"])),
        "normalize_routing_weights": draw(st.integers(0, 1)),
        "routed_scaling_factor": draw(st.sampled_from([1.0, 0.5, 2.5])),
        "n_group": n_group,
        # top2_sum needs groups of at least two experts
        "group_score": draw(st.sampled_from(["top2_sum", "max"] if experts // n_group > 1 else ["max"])),
        "activation": draw(st.sampled_from(ACTIVATIONS)),
        "gated": draw(st.integers(0, 1)),
        "gate_up_layout": draw(st.sampled_from(["concatenated", "interleaved"])),
        "activation_alpha": draw(st.sampled_from([1.0, 1.702])),
        "activation_beta": draw(st.sampled_from([0.0, 1.0])),
        "apply_weight_on_input": draw(st.integers(0, 1)),
    }
    if n_group > 1 and draw(st.booleans()):
        attrs["topk_group"] = topk_group
    if draw(st.booleans()):
        attrs["swiglu_limit"] = draw(st.sampled_from([0.5, 7.0]))
    optional = draw(
        st.sets(st.sampled_from(["router_bias", "selection_bias", "fc1_bias", "fc2_bias", "shared", "shared_gate"]))
    )
    sizes = {
        "E": experts,
        "T": draw(st.integers(1, 6)),
        "lead": draw(st.sampled_from([(), (2,)])),
        "H": draw(st.integers(1, 6)),
        "I": draw(st.integers(1, 5)),
        "Is": draw(st.integers(1, 4)),
        "seed": draw(st.integers(0, 2**16)),
    }
    return attrs, optional, sizes


def _arrays(attrs, optional, sizes) -> dict[str, np.ndarray]:
    rng = seeded(sizes["seed"])
    E, H, inter, Is = sizes["E"], sizes["H"], sizes["I"], sizes["Is"]
    F = 2 if attrs["gated"] else 1

    def randn(*shape, scale=1.0):
        return (rng.randn(*shape) * scale).astype(np.float32)

    arrays = {
        "X": randn(*sizes["lead"], sizes["T"], H),
        "router_weight": randn(H, E),
        "fc1_weight": randn(E, H, F * inter, scale=0.7),
        "fc2_weight": randn(E, inter, H, scale=0.7),
    }
    if "router_bias" in optional:
        arrays["router_bias"] = randn(E)
    if "selection_bias" in optional:
        arrays["selection_bias"] = randn(E, scale=0.3)
    if "fc1_bias" in optional:
        arrays["fc1_bias"] = randn(E, F * inter)
    if "fc2_bias" in optional:
        arrays["fc2_bias"] = randn(E, H)
    if "shared" in optional:
        arrays["shared_fc1_weight"] = randn(H, F * Is, scale=0.7)
        arrays["shared_fc2_weight"] = randn(Is, H, scale=0.7)
        if "shared_gate" in optional:
            arrays["shared_gate_weight"] = randn(H, 1)
    return arrays


@SETTINGS
@given(moe_configs())
def test_body_matches_reference(config) -> None:
    attrs, optional, sizes = config
    arrays = _arrays(attrs, optional, sizes)
    expected = moe(arrays, **attrs)
    names = [n for n in arrays if n != "X"]
    model = moe_model(arrays, attrs, graph_inputs=["X", *names])
    feeds = dict(arrays)
    got_reference = ReferenceEvaluator(model).run(None, feeds)[0]
    got_ort = session(model, threads=1).run(None, feeds)[0]
    np.testing.assert_allclose(got_reference, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(got_ort, expected, rtol=RTOL, atol=ATOL)


def _grouped_matmul_model():
    import onnx
    from onnx import helper

    node = helper.make_node("GroupedMatMul", ["X", "W", "idx"], ["Y"], domain=PROPOSAL_DOMAIN)
    graph = helper.make_graph(
        [node],
        "gmm",
        [
            helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, ["M", "K"]),
            helper.make_tensor_value_info("W", onnx.TensorProto.FLOAT, ["G", "K", "N"]),
            helper.make_tensor_value_info("idx", onnx.TensorProto.INT64, ["M", "k"]),
        ],
        [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, ["M", "k", "N"])],
    )
    from proposals.moe.body import piece_proto

    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid(PROPOSAL_DOMAIN, 1)],
        functions=[piece_proto(GroupedMatMul.name)],
    )


GMM = _grouped_matmul_model()
GMM_ORT = session(GMM, threads=1)
GMM_REF = ReferenceEvaluator(GMM)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    st.integers(1, 7), st.integers(1, 3), st.integers(1, 5), st.integers(1, 4), st.integers(1, 4), st.integers(0, 2**16)
)
def test_grouped_matmul_both_strategies(M, k, G, K, N, seed) -> None:
    """Y[m, j] = X[m] @ W[idx[m, j]], whether or not groups repeat (Gather or Loop branch)."""
    rng = seeded(seed)
    X = rng.randn(M, K).astype(np.float32)
    W = rng.randn(G, K, N).astype(np.float32)
    idx = rng.randint(0, G, size=(M, k)).astype(np.int64)
    expected = np.einsum("mk,mjkn->mjn", X.astype(np.float64), W[idx].astype(np.float64))
    for runner in (GMM_ORT, GMM_REF):
        got = runner.run(None, {"X": X, "W": W, "idx": idx})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
