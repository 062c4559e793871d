"""GroupedMatMul as RFC onnx/onnx#8193 defines it: the with-bias body on both of its
strategies, the ND variant, the MoE body's zero bias, and the spec page's markers."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper
from onnx.reference import ReferenceEvaluator

from generator.markdown import GENERATED
from generator.onnx_build import PROPOSAL_DOMAIN, make_model, seeded
from generator.ort import session
from proposals.moe.build import moe_model
from proposals.moe.grouped_matmul import SCHEMA, functions, grouped_matmul_model, reference
from proposals.moe.reference import moe
from proposals.moe.schema import OPSET

PAGE = Path(__file__).parents[1] / "grouped_matmul.md"


def _symbolic_model() -> onnx.ModelProto:
    names = ("input", "weights", "group_indices", "bias")
    shapes = (["M", "K"], ["G", "K", "N"], ["M", "k"], ["G", "N"])
    types = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT, onnx.TensorProto.INT64, onnx.TensorProto.FLOAT)
    graph = helper.make_graph(
        [helper.make_node(SCHEMA.name, list(names), ["output"], domain=PROPOSAL_DOMAIN)],
        "gmm_bias",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in zip(names, types, shapes, strict=True)],
        [helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, ["M", "k", "N"])],
    )
    return make_model(graph, {"": OPSET, PROPOSAL_DOMAIN: 1}, functions(bias=True))


MODEL = _symbolic_model()
RUNNERS = (session(MODEL, threads=1), ReferenceEvaluator(MODEL))


@settings(max_examples=30, deadline=None, derandomize=True)
@given(st.integers(1, 6), st.integers(1, 3), st.integers(1, 4), st.integers(0, 2**16))
def test_bias_on_both_strategies(M: int, k: int, G: int, seed: int) -> None:
    """output[m, j] = input[m] @ weights[g] + bias[g], g = group_indices[m, j] in [0, G)."""
    rng = seeded(seed)
    feeds = {
        "input": rng.randn(M, 3).astype(np.float32),
        "weights": rng.randn(G, 3, 2).astype(np.float32),
        "group_indices": rng.randint(0, G, size=(M, k)).astype(np.int64),
        "bias": rng.randn(G, 2).astype(np.float32),
    }
    expected = reference(*feeds.values())
    for runner in RUNNERS:
        np.testing.assert_allclose(runner.run(None, feeds)[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("index", [2, -1])
def test_reference_refuses_an_index_out_of_range(index: int) -> None:
    """Indices lie in [0, G), as ai.onnx GroupedMatMul-29 says: -1 is invalid too."""
    with pytest.raises(ValueError, match=rf"group index {index} outside \[0, 2\)"):
        reference(np.ones((1, 1)), np.ones((2, 1, 1)), np.array([[index]]))


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_body_takes_the_types_of_groupedmatmul_29(dtype, index_dtype) -> None:
    """T includes double and group_indices may be int32, as in ai.onnx GroupedMatMul-29."""
    rng = seeded(5)
    x, w = rng.randn(4, 3).astype(dtype), rng.randn(3, 3, 2).astype(dtype)
    for idx in (np.array([[0, 2], [1, 0], [2, 1], [1, 2]]), np.array([[0, 0], [1, 0], [0, 1], [1, 1]])):
        idx = idx.astype(index_dtype)  # distinct slots (Gather branch), then repeats (the Loop)
        model = grouped_matmul_model(x, w, idx)
        got = ReferenceEvaluator(model).run(None, {"input": x, "weights": w, "group_indices": idx})[0]
        assert got.dtype == dtype
        np.testing.assert_allclose(got, reference(x, w, idx), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("given_bias", ["fc1_bias", "fc2_bias"])
def test_moe_with_one_expert_bias(given_bias: str) -> None:
    """Only one of the two expert biases: the other GroupedMatMul call gets zeros."""
    rng = seeded(3)
    arrays = {
        "X": rng.randn(5, 4).astype(np.float32),
        "router_weight": rng.randn(4, 3).astype(np.float32),
        "fc1_weight": rng.randn(3, 4, 6).astype(np.float32),
        "fc2_weight": rng.randn(3, 3, 4).astype(np.float32),
    }
    arrays[given_bias] = rng.randn(3, 6 if given_bias == "fc1_bias" else 4).astype(np.float32)
    model = moe_model(arrays, {"k": 2})
    expected = moe(arrays, k=2)
    np.testing.assert_allclose(session(model).run(None, {"X": arrays["X"]})[0], expected, rtol=1e-5, atol=1e-5)
    bodies = [f for f in model.functions if f.name == "GroupedMatMul"]
    assert len(bodies) == 1 and list(bodies[0].input) == ["input", "weights", "group_indices", "bias"]


def test_page_markers_resolve() -> None:
    markers = GENERATED.findall(PAGE.read_text())
    assert markers == [("proposals.moe.grouped_matmul", "spec_markdown"), ("upstream.grouped_matmul", "page_markdown")]
    spec, upstream = (getattr(importlib.import_module(module), name)() for module, name in markers)
    assert "GroupedMatMulND" in spec and "group_indices" in spec
    assert "ai.onnx GroupedMatMul-29" in upstream and "project reference | 11 of 11 pass" in upstream


def test_moe_body_on_onnx_groupedmatmul_29() -> None:
    """moe_model(onnx_grouped_matmul=True): the MoE body calls ai.onnx GroupedMatMul-29 and
    carries no GroupedMatMul body of its own (onnx-weekly runs it: make upstream)."""
    rng = seeded(4)
    arrays = {
        "X": rng.randn(3, 4).astype(np.float32),
        "router_weight": rng.randn(4, 3).astype(np.float32),
        "fc1_weight": rng.randn(3, 4, 6).astype(np.float32),
        "fc2_weight": rng.randn(3, 3, 4).astype(np.float32),
    }
    model = moe_model(arrays, {"k": 2}, onnx_grouped_matmul=True)
    (body,) = [f for f in model.functions if f.name == "MoE"]
    calls = [n for n in body.node if n.op_type == "GroupedMatMul"]
    assert len(calls) == 2 and all(n.domain == "" for n in calls)
    assert {(o.domain, o.version) for o in body.opset_import} >= {("", 29)}
    assert {(o.domain, o.version) for o in model.opset_import} >= {("", 29)}
    assert not any(f.name == "GroupedMatMul" for f in model.functions)
