"""Op schemas: attribute checking and the rendered spec section."""

from __future__ import annotations

import pytest
from onnx import helper

from generator import UsageError
from generator.onnx_build import PROPOSAL_DOMAIN
from generator.opspec import Attribute, OpSchema, Parameter, TypeConstraint, render_spec
from generator.registry import CaseSpec

SCALE = OpSchema(
    name="Scale",
    domain=PROPOSAL_DOMAIN,
    since_version=1,
    summary="Multiplies by a constant.",
    doc="Y = X * alpha, or X / alpha when `mode` is 'divide'.",
    attributes=(
        Attribute("alpha", "float", "The factor.", default=1.0),
        Attribute("mode", "string", "What to do.", default="multiply", allowed=("multiply", "divide")),
        Attribute("axes", "ints", "Unused here.", default=None),
    ),
    inputs=(Parameter("X", "T", "(N, D)", "Input."), Parameter("B", "T", "(D)", "Bias.", optional=True)),
    outputs=(Parameter("Y", "T", "(N, D)", "Output."),),
    type_constraints=(TypeConstraint("T", ("tensor(float)",), "Float tensors."),),
)


def test_resolve_fills_defaults_and_checks() -> None:
    assert SCALE.resolve({"alpha": 2}) == {"alpha": 2, "mode": "multiply", "axes": None}
    with pytest.raises(UsageError, match=r"invalid attribute mode='add' for .*Scale; valid: 'multiply', 'divide'"):
        SCALE.resolve({"mode": "add"})
    with pytest.raises(UsageError, match=r"unknown attribute 'beta' for .*Scale; valid: alpha, mode, axes"):
        SCALE.resolve({"beta": 1})
    with pytest.raises(UsageError, match=r"invalid attribute axes=\(1, 'x'\) for .*Scale: expected ints"):
        SCALE.resolve({"axes": (1, "x")})
    with pytest.raises(UsageError, match="expected float"):
        SCALE.resolve({"alpha": True})


def test_make_node_checks_arity() -> None:
    node = SCALE.make_node(["x"], ["y"], alpha=3.0)
    assert (node.domain, node.op_type) == (PROPOSAL_DOMAIN, "Scale")
    with pytest.raises(UsageError, match="takes 1 to 2 inputs, got 3"):
        SCALE.make_node(["x", "b", "c"], ["y"])


def test_render_spec_sections() -> None:
    body = helper.make_function(
        PROPOSAL_DOMAIN,
        "Scale",
        ["X"],
        ["Y"],
        [helper.make_node("Identity", ["X"], ["Y"])],
        [helper.make_opsetid("", 21)],
    )
    example = CaseSpec("demo", "scale_twice", "Scales by two.", test_make_node_checks_arity)
    text = render_spec(SCALE, body, [example], catalogue_link="../../catalogue.md")
    for heading in (
        "#### Version",
        "#### Attributes",
        "#### Inputs (1 - 2)",
        "#### Outputs (1 - 1)",
        "#### Type constraints",
        "#### Function body",
        "#### Examples",
    ):
        assert heading in text
    assert "| `mode` | string | default is `'multiply'` | What to do. One of `multiply`, `divide`. |" in text
    assert "| `B` (optional) | T | `(D)` | Bias. |" in text
    assert "Y = Identity (X)" in text
    assert "[`demo/scale_twice`](../../catalogue.md#demo-scale_twice)" in text


def test_function_text_prints_every_attribute_and_parses_back() -> None:
    """onnx.printer drops attributes that have defaults; the spec page must show them."""
    import onnx

    from generator.opspec import function_text

    source = """<domain: "d", opset_import: ["" : 24]>
F <a, b: int = 1, c: float = 0.5, s: string = "x">(x) => (y) { y = Identity(x) }"""
    function = onnx.parser.parse_function(source)
    text = function_text(function)
    assert 'F <a, b: int = 1, c: float = 0.5, s: string = "x">(x)' in text
    again = onnx.parser.parse_function(text)
    assert list(again.attribute) == ["a"]
    assert [(a.name, helper.get_attribute_value(a)) for a in again.attribute_proto] == [
        ("b", 1),
        ("c", 0.5),
        ("s", b"x"),
    ]
