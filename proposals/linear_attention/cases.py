"""Zoo cases of the Linear attention proposal: one function per case."""

from __future__ import annotations

import numpy as np

from generator import Case, DataSet, case
from generator.onnx_build import seeded
from proposals.linear_attention.build import leaky_identity_model
from proposals.linear_attention.reference import leaky_identity


@case
def example() -> Case:
    """A standard-op graph for the proposal's semantics, checked against the numpy reference."""
    x = seeded(0).randn(2, 3).astype(np.float32)
    alpha = 0.5
    expected = leaky_identity(x, alpha=alpha)
    return Case(leaky_identity_model(alpha, list(x.shape)), [DataSet({"x": x}, {"y": expected})])
