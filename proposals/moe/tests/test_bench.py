"""The bench's models (no timing here): every ONNX variant of the bench block gives the
numpy reference's output on onnxruntime, and fusing its primitive form yields the
hand-built com.microsoft.MoE graph node for node, so the page may call their timing
spread noise."""

from __future__ import annotations

import numpy as np

from generator.onnx_build import seeded
from generator.ort import session
from proposals.moe import docs
from proposals.moe.bench import ATTRS, FUSED, KERNEL, models
from proposals.moe.docs import fused_and_kernel_nodes
from proposals.moe.reference import moe


def test_every_variant_matches_the_reference() -> None:
    rng = seeded(3)
    arrays = {
        "X": rng.randn(9, 16).astype(np.float32),
        "router_weight": rng.randn(16, 6).astype(np.float32),
        "fc1_weight": (rng.randn(6, 16, 24) * 0.3).astype(np.float32),
        "fc2_weight": (rng.randn(6, 12, 16) * 0.3).astype(np.float32),
    }
    expected = moe({n: a.astype(np.float64) for n, a in arrays.items()}, **ATTRS)
    built = models(arrays)
    assert {FUSED, KERNEL} <= set(built)
    for name, model in built.items():
        got = session(model, threads=1).run(None, {"X": arrays["X"]})[0]
        np.testing.assert_allclose(
            got, expected, rtol=1e-5, atol=1e-4, err_msg=name
        )  # float32 sums: error scales with size


def test_fusion_gives_the_kernel_graph() -> None:
    fused, kernel = fused_and_kernel_nodes()
    assert fused == kernel
    assert [(domain, op) for domain, op, _ in fused] == [("", "MatMul"), ("com.microsoft", "MoE")]  # router, kernel


def test_a_differing_attribute_is_not_the_same_graph(monkeypatch) -> None:
    fused, kernel = fused_and_kernel_nodes()
    changed = [(d, op, [(n, 3 if (op, n) == ("MoE", "k") else v) for n, v in attrs]) for d, op, attrs in fused]
    assert changed != kernel
    monkeypatch.setattr(docs, "fused_and_kernel_nodes", lambda: (changed, kernel))
    assert "**not** the same graph" in docs.fused_is_kernel()
