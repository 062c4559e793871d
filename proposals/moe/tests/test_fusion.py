"""The fusion rules: the primitive form (SwiGLU-28 and spelled-out SiLU), the inlined body,
the gather-per-slot body, the dense all-experts form (batched and unrolled per expert),
each fused into com.microsoft.MoE with equal outputs on ORT;
the committed hit-rate JSON agrees with a recomputation of two of its cases."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
import pytest

from generator.onnx_build import seeded
from generator.ort import session
from proposals.moe.fusion import fuse
from proposals.moe.fusion_report import compute, family_cases, load
from proposals.moe.grouped_matmul import with_gather_per_slot_body
from proposals.moe.primitive import dense_model, primitive_model
from proposals.moe.reference import moe


def _arrays(biases: bool) -> dict[str, np.ndarray]:
    rng = seeded(5)
    arrays = {
        "X": rng.randn(7, 8).astype(np.float32),
        "router_weight": rng.randn(8, 4).astype(np.float32),
        "router_bias": rng.randn(4).astype(np.float32),
        "fc1_weight": rng.randn(4, 8, 6).astype(np.float32),
        "fc2_weight": rng.randn(4, 3, 8).astype(np.float32),
        "shared_fc1_weight": rng.randn(8, 6).astype(np.float32),
        "shared_fc2_weight": rng.randn(3, 8).astype(np.float32),
    }
    if biases:
        arrays |= {"fc1_bias": rng.randn(4, 6).astype(np.float32), "fc2_bias": rng.randn(4, 8).astype(np.float32)}
    return arrays


ATTRS = [
    {"k": 2, "normalize_routing_weights": 1},
    {"k": 2, "gate_up_layout": "interleaved", "swiglu_limit": 0.7, "activation_alpha": 1.702, "activation_beta": 1.0},
    {"k": 2, "scoring": "sigmoid", "normalize_routing_weights": 1, "routed_scaling_factor": 2.5},
    {"k": 1, "gated": 0, "activation": "relu"},
]


@pytest.mark.parametrize("attrs", ATTRS, ids=lambda a: "-".join(f"{k}={v}" for k, v in a.items()))
def test_primitive_form_fuses(attrs) -> None:
    arrays = _arrays(biases=True)
    if not attrs.get("gated", 1):  # non-gated experts: fc1 gives I = 3 columns, not 2 * I
        arrays |= {n: arrays[n][..., :3].copy() for n in ("fc1_weight", "fc1_bias", "shared_fc1_weight")}
    model = primitive_model(arrays, attrs)
    onnx.checker.check_model(model, full_check=True)
    fused, report = fuse(model)
    assert report == {"fused": 1, "misses": []}
    assert not any(n.domain == "org.onnx.genai.proposals" for n in fused.graph.node)
    expected = moe(arrays, **attrs)
    for m in (model, fused):
        np.testing.assert_allclose(session(m).run(None, {"X": arrays["X"]})[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("unrolled", [False, True], ids=["batched", "unrolled"])
@pytest.mark.parametrize("attrs", ATTRS, ids=lambda a: "-".join(f"{k}={v}" for k, v in a.items()))
def test_dense_form_fuses(attrs, unrolled: bool) -> None:
    arrays = _arrays(biases=True)
    if not attrs.get("gated", 1):
        arrays |= {n: arrays[n][..., :3].copy() for n in ("fc1_weight", "fc1_bias", "shared_fc1_weight")}
    model = dense_model(arrays, attrs, unrolled=unrolled)
    onnx.checker.check_model(model, full_check=True)
    assert not any(n.op_type == "GroupedMatMul" for n in model.graph.node)
    fused, report = fuse(model)
    assert report == {"fused": 1, "misses": []}
    assert not any(n.op_type in ("TopK", "ScatterElements", "Equal") for n in fused.graph.node)
    expected = moe(arrays, **attrs)
    for m in (model, fused):
        np.testing.assert_allclose(session(m).run(None, {"X": arrays["X"]})[0], expected, rtol=1e-5, atol=1e-5)


def test_a_dense_near_match_says_why() -> None:
    arrays = {n: v for n, v in _arrays(biases=False).items() if not n.startswith("shared")}
    _, report = fuse(dense_model(arrays, {"k": 2, "scoring": "sigmoid"}, unrolled=True))
    assert report == {"fused": 0, "misses": ["sigmoid scores without renormalization: MoE always applies softmax"]}


def test_swiglu28_primitive_form_fuses() -> None:
    """SwiGLU-28 does not run on ORT 1.32 CPU (no Swish-24 kernel); the routed part fuses."""
    arrays = {n: v for n, v in _arrays(biases=False).items() if not n.startswith("shared")}
    model = primitive_model(arrays, {"k": 2}, swiglu28=True)
    assert any(n.op_type == "SwiGLU" for n in model.graph.node)
    fused, report = fuse(model)
    assert report["fused"] == 1 and not any(n.op_type == "SwiGLU" for n in fused.graph.node)
    np.testing.assert_allclose(session(fused).run(None, {"X": arrays["X"]})[0], moe(arrays, k=2), rtol=1e-5, atol=1e-5)


def test_a_near_match_says_why() -> None:
    arrays = {n: v for n, v in _arrays(biases=False).items() if not n.startswith("shared")}
    model = primitive_model(arrays, {"k": 2, "scoring": "sigmoid"})
    _, report = fuse(model)
    assert report == {"fused": 0, "misses": ["sigmoid scores without renormalization: MoE always applies softmax"]}


@pytest.mark.parametrize("inline", ["function op", "inlined body", "gather-per-slot"])
def test_body_forms_fuse(inline: str) -> None:
    from proposals.moe.build import moe_model

    arrays = _arrays(biases=True)
    attrs = {"k": 2, "normalize_routing_weights": 1}
    model = moe_model(arrays, attrs, dynamic=True)
    source = {
        "function op": model,
        "inlined body": onnx.inliner.inline_local_functions(model),
        "gather-per-slot": onnx.inliner.inline_local_functions(with_gather_per_slot_body(model)),
    }[inline]
    fused, report = fuse(source)
    assert report["fused"] == 1 and not fused.functions
    got = session(fused).run(None, {"X": arrays["X"]})[0]
    np.testing.assert_allclose(got, moe(arrays, **attrs), rtol=1e-5, atol=1e-5)


def test_committed_hit_rate_matches_a_recomputation() -> None:
    names = ("mixtral", "deepseek_v3")
    committed = [r for r in load() if r["case"] in names]
    again = compute(names)
    strip = [{k: v for k, v in r.items() if k != "max_abs_diff_vs_expected"} for r in again]
    assert strip == [{k: v for k, v in r.items() if k != "max_abs_diff_vs_expected"} for r in committed]
    # the case's own rtol + atol against its largest output: float32 error grows with the values
    bound = {
        n: c.atol + c.rtol * max(np.abs(d.outputs["output"]).max() for d in c.datasets) for n, c in family_cases(names)
    }
    assert all(r["max_abs_diff_vs_expected"] <= bound[r["case"]] for r in again if r["fused"])


@pytest.mark.parametrize("form", ["function op", "primitive"])
def test_forms_on_onnx_groupedmatmul_29_fuse(form: str) -> None:
    """The rules take ai.onnx GroupedMatMul-29 (onnx 1.24) as they take the proposal's op."""
    from proposals.moe.build import moe_model
    from proposals.moe.grouped_matmul import on_onnx_op
    from proposals.moe.schema import OPSET

    arrays = _arrays(biases=True)
    attrs = {"k": 2, "normalize_routing_weights": 1}
    proposal = moe_model(arrays, attrs, dynamic=True) if form == "function op" else primitive_model(arrays, attrs)
    model = on_onnx_op(proposal)
    assert {(n.domain, n.op_type) for f in (model.graph, *model.functions) for n in f.node} >= {("", "GroupedMatMul")}
    fused, report = fuse(model)
    assert report == {"fused": 1, "misses": []}
    assert not any(n.op_type == "GroupedMatMul" for n in fused.graph.node)
    # onnxruntime 1.32 loads opsets up to 28; with GroupedMatMul fused away the graph needs no more
    for opset in fused.opset_import:
        if opset.domain == "":
            opset.version = OPSET
    got = session(fused).run(None, {"X": arrays["X"]})[0]
    np.testing.assert_allclose(got, moe(arrays, **attrs), rtol=1e-5, atol=1e-5)
