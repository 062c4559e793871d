"""The Linear attention reference and its zoo case."""

from __future__ import annotations

import numpy as np

from generator.ort import session
from proposals.linear_attention.cases import example
from proposals.linear_attention.reference import leaky_identity


def test_reference_on_a_hand_computed_example() -> None:
    x = np.array([2.0, -1.0], np.float32)
    np.testing.assert_array_equal(leaky_identity(x, alpha=0.5), np.array([1.0, -1.0], np.float32))


def test_case_runs_on_onnxruntime() -> None:
    built = example()
    dataset = built.datasets[0]
    (y,) = session(built.model).run(None, dict(dataset.inputs))
    np.testing.assert_allclose(y, dataset.outputs["y"], rtol=built.rtol, atol=built.atol)
