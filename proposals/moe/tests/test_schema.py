"""Attribute checking: bad values get one clear error naming what is valid."""

from __future__ import annotations

import pytest

from generator.errors import UsageError
from proposals.moe.body import build_function
from proposals.moe.schema import resolve


def test_defaults_fill_in_and_optional_stay_absent() -> None:
    values = resolve({"k": 2, "activation_alpha": 2})
    assert values["scoring"] == "softmax" and values["n_group"] == 1
    assert values["activation_alpha"] == 2.0 and isinstance(values["activation_alpha"], float)
    assert "swiglu_limit" not in values and "topk_group" not in values


@pytest.mark.parametrize(("attrs", "message"), [
    ({}, "attribute 'k' of org.onnx.genai.proposals.MoE is required"),
    ({"k": 0}, "invalid attribute k=0 .*must be >= 1"),
    ({"k": 2, "scoring": "softplus"}, "invalid attribute scoring='softplus'.*valid: 'softmax', 'sigmoid'"),
    ({"k": 2, "n_group": 2, "topk_group": 3}, r"topk_group=3 .*must be in \[1, n_group=2\]"),
    ({"k": 2, "capacity": 1}, "unknown attribute 'capacity'"),
])
def test_bad_attributes(attrs, message) -> None:
    with pytest.raises(UsageError, match=message):
        resolve(attrs)


def test_bad_inputs() -> None:
    base = ["X", "router_weight", "fc1_weight", "fc2_weight"]
    with pytest.raises(UsageError, match="needs input"):
        build_function({"k": 1}, base[:-1])
    with pytest.raises(UsageError, match="come together"):
        build_function({"k": 1}, [*base, "shared_fc1_weight"])
