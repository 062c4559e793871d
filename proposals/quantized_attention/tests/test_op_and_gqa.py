"""QuantizedAttention (fusion of the standard form) and the rewrites to and from ORT's GQA."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from generator.errors import UsageError
from generator.ort import session
from proposals.quantized_attention import cases, function_op, gqa, reference
from proposals.quantized_attention.docs import spec_markdown
from proposals.quantized_attention.spec import SCHEMA

GQA_CASES = [cases.int8_per_tensor, cases.int8_per_channel, cases.int4_per_tensor]


def test_fused_step_equals_the_standard_form_on_onnxruntime() -> None:
    standard = cases.int8_per_token_group32()
    fused = function_op.fuse(standard.model)
    assert [n.op_type for n in fused.graph.node].count("QuantizedAttention") == 1
    assert not any(n.op_type in ("DequantizeLinear", "Attention") for n in fused.graph.node)
    a, b = session(standard.model), session(fused)
    for dataset in standard.datasets:
        for got, want in zip(b.run(None, dict(dataset.inputs)), a.run(None, dict(dataset.inputs)), strict=True):
            np.testing.assert_array_equal(got, want)


def test_fuse_refuses_a_zero_point() -> None:
    with pytest.raises(UsageError, match="zero point; QuantizedAttention is symmetric"):
        function_op.fuse(cases.uint8_per_tensor_zero_point().model)


def test_schema_checks_attributes_and_the_page_renders() -> None:
    with pytest.raises(UsageError, match="valid: 0, 1"):
        SCHEMA.make_node(
            ["q"] * 6, ["y"], key_axis=2, key_block_size=8, value_axis=2, value_block_size=8, scale=0.1, is_causal=2
        )
    assert "QuantizedAttention" in spec_markdown() and "op_int8_per_channel" in spec_markdown()


@pytest.mark.parametrize("build", GQA_CASES, ids=lambda f: f.__name__)
def test_gqa_form_equals_the_standard_form_on_onnxruntime(build) -> None:
    standard = build()
    rewritten = gqa.to_gqa(standard.model)
    onnx.checker.check_model(rewritten)
    assert gqa.from_gqa(rewritten).SerializeToString() == standard.model.SerializeToString()
    four_bit = build is cases.int4_per_tensor  # ORT cannot run the int4 standard form: compare with its reference
    ours = None if four_bit else session(standard.model)
    theirs = session(rewritten)
    for dataset in standard.datasets:
        feeds = dict(dataset.inputs)
        want = (
            ours.run(None, feeds)[:3] if ours else [dataset.outputs[n] for n in ("y", "present_key", "present_value")]
        )
        if four_bit:
            feeds["past_key"], feeds["past_value"] = (
                reference.to_gqa_int4(feeds[n]) for n in ("past_key", "past_value")
            )
            want[1:] = [reference.to_gqa_int4(c) for c in want[1:]]
        y, key, value = theirs.run(None, feeds)
        valid = int(dataset.inputs["nonpad_kv_seqlen"].max())  # GQA zeroes slots past the total length
        np.testing.assert_allclose(y, want[0], rtol=cases.RTOL, atol=cases.ATOL)  # float32 kernels differ
        np.testing.assert_array_equal(key[:, :, :valid], want[1][:, :, :valid])
        np.testing.assert_array_equal(value[:, :, :valid], want[2][:, :, :valid])


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (cases.uint8_per_channel_zero_point, "no zero-point input"),
        (cases.float8e4m3fn_per_tensor, "float8e4m3fn"),
        (cases.int8_per_token_scale_cache, "no per-token mode"),
        (cases.int8_per_token_group32, "no per-token group"),
        (cases.int8_per_channel_circular_wrap, "circular"),
        (cases.int8_per_channel_attention25_window, "maps is_causal=1 only"),
    ],
)
def test_steps_without_a_gqa_form_say_why_in_one_line(build, reason: str) -> None:
    with pytest.raises(UsageError, match=reason) as err:
        gqa.to_gqa(build().model)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("attribute", [{"local_window_size": 8}, {"softcap": 30.0}, {"scale": 0.5}])
def test_from_gqa_refuses_attributes_it_does_not_map(attribute: dict) -> None:
    """A GQA node with a window, softcap or scale is refused in one line, not rebuilt without it."""
    model = gqa.to_gqa(cases.int8_per_tensor().model)
    node = next(n for n in model.graph.node if n.op_type == "GroupQueryAttention")
    node.attribute.extend(onnx.helper.make_attribute(k, v) for k, v in attribute.items())
    with pytest.raises(UsageError, match=f"sets {next(iter(attribute))};") as err:
        gqa.from_gqa(model)
    assert "\n" not in str(err.value)
