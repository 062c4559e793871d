"""The reference's quantize/dequantize against onnx's own QuantizeLinear/DequantizeLinear.

Edge values: exact ties (round half to even), values just past the code range and far
outside it (saturation), infinities for float8 (saturate=1 clamps them to ±448).
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from onnx.reference import ReferenceEvaluator

from generator.errors import UsageError
from generator.ort import session
from proposals.quantized_attention import build, reference

TIES = [0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.5, -3.5]
EDGES = {
    "int8": (np.float32(1.0), None, TIES + [126.5, 127.5, 128.0, 1e9, -127.5, -128.5, -129.0, -1e9]),
    "uint8": (np.float32(0.5), np.uint8(128), TIES + [63.25, 63.75, 64.0, 1e9, -63.75, -64.0, -64.25, -1e9]),
    "int4": (np.float32(1.0), None, TIES + [6.5, 7.5, 8.0, 100.0, -7.5, -8.5, -9.0, -100.0]),
    "float8e4m3fn": (
        np.float32(2.0),
        None,
        [1.0, 2.0**-9, 3 * 2.0**-10, 896.0, 900.0, 928.0, 1e6, -1e6, np.inf, -np.inf],
    ),
}
# What the reference must give, by hand from the spec text (per dtype, same order as EDGES).
EXPECTED_CODES = {
    "int8": [0, 2, 2, 0, -2, -2, 4, -4, 126, 127, 127, 127, -128, -128, -128, -128],
    "uint8": [129, 131, 133, 127, 125, 123, 135, 121, 254, 255, 255, 255, 0, 0, 0, 0],
    "int4": [0, 2, 2, 0, -2, -2, 4, -4, 6, 7, 7, 7, -8, -8, -8, -8],
    # /2: 0.5, 2^-10 (-> 0: tie between 0 and 2^-9, 0 is even), 1.5*2^-10 (-> 2^-9), then 448 saturation.
    "float8e4m3fn": [0.5, 0.0, 2.0**-9, 448.0, 448.0, 448.0, 448.0, -448.0, 448.0, -448.0],
}


def _feeds(dtype: str):
    scale, zero, values = EDGES[dtype]
    feeds = {"x": np.array(values, np.float32), "scale": np.asarray(scale)}
    if zero is not None:
        feeds["zero_point"] = np.asarray(zero)
    return feeds, scale, zero


def _reference_codes(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    feeds, scale, zero = _feeds(dtype)
    codes = reference.quantize(feeds["x"], scale, zero, dtype)
    return codes, reference.dequantize(codes, scale, zero)


@pytest.mark.parametrize("dtype", list(EDGES))
def test_reference_codes_follow_the_spec_text(dtype: str) -> None:
    codes, _ = _reference_codes(dtype)
    assert codes.dtype == reference.FORMATS[dtype].dtype
    np.testing.assert_array_equal(codes.astype(np.float64), np.array(EXPECTED_CODES[dtype], np.float64))


@pytest.mark.parametrize("runtime", ["reference", "onnxruntime"])
@pytest.mark.parametrize("dtype", list(EDGES))
def test_reference_matches_onnx_quantize_and_dequantize(dtype: str, runtime: str) -> None:
    feeds, _, zero = _feeds(dtype)
    model = build.qdq_model(dtype, [len(feeds["x"])], with_zero_point=zero is not None)
    if runtime == "reference":
        got_codes, got_y = ReferenceEvaluator(model).run(None, feeds)
    else:
        got_codes, got_y = session(model).run(None, feeds)
    codes, y = _reference_codes(dtype)
    np.testing.assert_array_equal(got_codes, codes.astype(got_codes.dtype))
    np.testing.assert_array_equal(got_y, y)


def test_float8_keeps_nan() -> None:
    codes = reference.quantize(np.array([np.nan], np.float32), np.float32(1), None, "float8e4m3fn")
    assert np.isnan(codes.astype(np.float32)).all()


def test_int4_packing_is_onnx_packing() -> None:
    from onnx import numpy_helper

    codes = np.array([1, -2, 7, -8, 3], ml_dtypes.int4)
    assert reference.pack_int4(codes).tobytes() == numpy_helper.from_array(codes).raw_data


def test_gqa_int4_layout_round_trips_with_a_plus_8_bias() -> None:
    codes = np.arange(-8, 8).astype(ml_dtypes.int4).reshape(2, 8)
    packed = reference.to_gqa_int4(codes)
    assert packed.shape == (2, 4) and packed[0, 0] == (0 | (1 << 4))  # -8 -> 0, -7 -> 1
    np.testing.assert_array_equal(reference.from_gqa_int4(packed), codes)


def test_dynamic_scale_of_an_all_zero_row_is_positive() -> None:
    scale = reference.dynamic_scale(np.zeros((1, 1, 1, 64), np.float32), "per_token_group", "int8")
    assert scale.shape == (1, 1, 1, 2) and (scale > 0).all()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "int2", "granularity": "per_tensor"}, "valid: int8, uint8, int4, float8e4m3fn"),
        ({"dtype": "int8", "granularity": "per_head"}, "valid: per_tensor, per_channel"),
        ({"dtype": "uint8", "granularity": "per_token"}, "valid for uint8: per_tensor, per_channel"),
        ({"dtype": "int8", "granularity": "per_tensor", "scale": np.float32([1, 2])}, "shape []"),
        ({"dtype": "int8", "granularity": "per_channel", "scale": np.ones((2, 4), np.float32)}, "[1, H, 1, D]"),
        ({"dtype": "int8", "granularity": "per_tensor", "scale": np.float32(0)}, "> 0"),
        ({"dtype": "int8", "granularity": "per_tensor", "scale": np.float32(-1)}, "> 0"),
        ({"dtype": "int8", "granularity": "per_tensor"}, "needs a static scale"),
        ({"dtype": "uint8", "granularity": "per_tensor", "scale": np.float32(1)}, "needs a uint8 zero_point"),
        ({"dtype": "int8", "granularity": "per_token", "scale": np.float32(1)}, "computed per row"),
    ],
)
def test_bad_quantization_is_a_one_line_usage_error(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        reference.CacheQuant(**kwargs)
    assert "\n" not in str(err.value)


def test_wrong_scale_cache_shape_is_a_usage_error() -> None:
    quant = reference.CacheQuant("int8", "per_token_group")
    codes, _ = reference.empty_cache(quant, 1, 2, 8, 64)
    with pytest.raises(UsageError, match=r"scale cache of shape \[1, 2, 8, 2\]"):
        reference.dequantize_cache(quant, codes, np.ones((1, 2, 8, 1), np.float32))
    with pytest.raises(UsageError, match="divisible by 32"):
        reference.dynamic_scale(np.zeros((1, 1, 1, 48), np.float32), "per_token_group", "int8")
