"""Attribute checking: bad values get one clear error naming what is valid."""

from __future__ import annotations

import numpy as np
import pytest

from generator.errors import UsageError
from proposals.moe.body import build_function
from proposals.moe.build import moe_model
from proposals.moe.reference import moe
from proposals.moe.schema import resolve


def test_defaults_fill_in_and_optional_stay_absent() -> None:
    values = resolve({"k": 2, "activation_alpha": 2})
    assert values["scoring"] == "softmax" and values["n_group"] == 1
    assert values["activation_alpha"] == 2.0 and isinstance(values["activation_alpha"], float)
    assert "swiglu_limit" not in values and "topk_group" not in values


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({}, "attribute 'k' of org.onnx.genai.proposals.MoE is required"),
        ({"k": 0}, "invalid attribute k=0 .*must be >= 1"),
        ({"k": 2, "scoring": "softplus"}, "invalid attribute scoring='softplus'.*valid: 'softmax', 'sigmoid'"),
        ({"k": 2, "n_group": 2, "topk_group": 3}, r"topk_group=3 .*must be in \[1, n_group=2\]"),
        ({"k": 2, "capacity": 1}, "unknown attribute 'capacity'"),
    ],
)
def test_bad_attributes(attrs, message) -> None:
    with pytest.raises(UsageError, match=message):
        resolve(attrs)


def test_bad_inputs() -> None:
    base = ["X", "router_weight", "fc1_weight", "fc2_weight"]
    with pytest.raises(UsageError, match="needs input"):
        build_function({"k": 1}, base[:-1])
    with pytest.raises(UsageError, match="come together"):
        build_function({"k": 1}, [*base, "shared_fc1_weight"])


def _arrays(E: int = 4, H: int = 3, inter: int = 2, *, gated: bool = True, **override) -> dict[str, np.ndarray]:
    """Consistent inputs for E experts of hidden size H and intermediate size inter."""
    F = 2 if gated else 1
    arrays = {
        "X": np.zeros((5, H), np.float32),
        "router_weight": np.zeros((H, E), np.float32),
        "fc1_weight": np.zeros((E, H, F * inter), np.float32),
        "fc2_weight": np.zeros((E, inter, H), np.float32),
    }
    arrays.update({name: np.zeros(shape, np.float32) for name, shape in override.items()})
    return arrays


@pytest.mark.parametrize(
    ("arrays", "attrs", "message"),
    [
        (
            _arrays(fc1_weight=(4, 3, 5)),
            {"k": 2},
            r"input fc1_weight of org.onnx.genai.proposals.MoE has shape \(4, 3, 5\); expected \[E, H, F\*I\] = "
            r"\(4, 3, 4\) \(H=3, E=4, I=2, F=2\)",
        ),
        (
            _arrays(fc1_weight=(4, 3, 4)),
            {"k": 2, "gated": 0},
            r"input fc1_weight .*expected \[E, H, F\*I\] = \(4, 3, 2\)",
        ),
        (_arrays(fc1_weight=(4, 7, 4)), {"k": 2}, r"input fc1_weight .*shape \(4, 7, 4\); expected .* = \(4, 3, 4\)"),
        (
            _arrays(fc2_weight=(3, 2, 3)),
            {"k": 2},
            r"input fc2_weight .*shape \(3, 2, 3\); expected \[E, I, H\] = \(4, 2, 3\)",
        ),
        (_arrays(fc2_weight=(4, 2, 6)), {"k": 2}, r"input fc2_weight .*expected \[E, I, H\] = \(4, 2, 3\)"),
        (
            _arrays(router_weight=(6, 4)),
            {"k": 2},
            r"input router_weight .*shape \(6, 4\); expected \[H, E\] = \(3, 4\)",
        ),
        (_arrays(router_weight=(3, 4, 1)), {"k": 2}, r"input router_weight .* must have rank 2, got shape \(3, 4, 1\)"),
        (_arrays(selection_bias=(5,)), {"k": 2}, r"input selection_bias .*expected \[E\] = \(4,\)"),
        (
            _arrays(shared_fc1_weight=(3, 4), shared_fc2_weight=(3, 3)),
            {"k": 2},
            r"input shared_fc1_weight .*shape \(3, 4\); expected \[H, F\*Is\] = \(3, 6\)",
        ),
        (_arrays(shared_fc1_weight=(3, 4)), {"k": 2}, r"input shared_fc1_weight .*needs input shared_fc2_weight"),
        ({"X": np.zeros((5, 3), np.float32)}, {"k": 1}, r"needs input\(s\) \['router_weight', 'fc1_weight'"),
        (_arrays(), {"k": 5}, r"invalid attribute k=5 .*must be <= E=4"),
        (_arrays(), {"k": 2, "n_group": 3, "group_score": "max"}, r"invalid attribute n_group=3 .*must divide E=4"),
        (
            _arrays(),
            {"k": 2, "n_group": 4},
            r"group_score='top2_sum' .*needs groups of at least 2 experts, "
            r"but E=4 / n_group=4 = 1; use group_score='max' or fewer groups",
        ),
        (
            _arrays(E=8),
            {"k": 3, "n_group": 4, "topk_group": 1},
            r"invalid attribute k=3 .*must be <= topk_group \* E / n_group = 2 \(the experts in the kept groups\)",
        ),
    ],
)
def test_bad_shapes(arrays, attrs, message) -> None:
    """The model builder and the reference reject the same inputs with the same message."""
    with pytest.raises(UsageError, match=message):
        moe_model(arrays, attrs)
    with pytest.raises(UsageError, match=message):
        moe(arrays, **attrs)


def test_good_shapes_build() -> None:
    """The limits themselves are allowed: k = E, two experts per group with top2_sum, and
    k = topk_group * E / n_group."""
    moe_model(_arrays(), {"k": 4})
    moe_model(_arrays(), {"k": 2, "n_group": 2, "topk_group": 1})
    moe_model(_arrays(gated=False), {"k": 1, "gated": 0, "n_group": 4, "group_score": "max"})
