"""Zoo cases: Q -> TensorScatter -> DQ -> Attention over a quantized KV cache.

Every dtype × granularity the reference defines appears at least once. Expected outputs
come from :mod:`proposals.quantized_attention.reference` (codes, scales) and the kv_cache
proposal's float64 attention reference, cast once to float32. Linear cases are two
steps (prefill 3 tokens, then decode 1 on the present caches); static scales are
calibrated on a separate draw, so some new values saturate, as in deployment.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from generator.onnx_build import seeded
from generator.registry import Case, DataSet, case
from proposals.quantized_attention import build, function_op, reference
from proposals.quantized_attention.reference import CacheQuant

B, HQ, HKV, L, D = 2, 4, 2, 8, 64
ATOL, RTOL = 1e-5, 1e-5


def _keys(rng: np.random.RandomState, batch: int, seq: int) -> np.ndarray:
    """Keys with one outlier channel (10×), the structure per-channel scales exist for."""
    keys = rng.randn(batch, HKV, seq, D)
    keys[..., 5] *= 10.0
    return keys.astype(np.float32)


def _quant(rng: np.random.RandomState, dtype: str, granularity: str, *, keys: bool) -> CacheQuant:
    """A CacheQuant; static scales come from a calibration draw of 4 tokens."""
    if granularity in reference.DYNAMIC:
        return CacheQuant(dtype, granularity)
    sample = _keys(rng, B, 4) if keys else rng.randn(B, HKV, 4, D).astype(np.float32)
    return CacheQuant(dtype, granularity, *reference.calibrate(sample, granularity, dtype))


def _datasets(
    k_quant: CacheQuant, v_quant: CacheQuant, rng, chunks, *, seen=0, mode="linear", **window
) -> list[DataSet]:
    """Steps of ``chunks`` new tokens each; set i's pasts are set i-1's presents."""
    key, key_s = reference.empty_cache(k_quant, B, HKV, L, D)
    value, value_s = reference.empty_cache(v_quant, B, HKV, L, D)
    positions, datasets = np.full(B, seen, np.int64), []
    for seq in chunks:
        q = rng.randn(B, HQ, seq, D).astype(np.float32)
        k, v = _keys(rng, B, seq), rng.randn(B, HKV, seq, D).astype(np.float32)
        step = reference.cache_step(
            k_quant, v_quant, (key, value, key_s, value_s), positions, q, k, v, mode=mode, **window
        )
        inputs = {"q": q, "k": k, "v": v, "past_key": key, "past_value": value}
        outputs = {"y": step.y, "present_key": step.present_key, "present_value": step.present_value}
        for name, past, present in (
            ("key", key_s, step.present_key_scale),
            ("value", value_s, step.present_value_scale),
        ):
            if present is not None:
                inputs[f"past_{name}_scale"], outputs[f"present_{name}_scale"] = past, present
        inputs |= {"write_indices": step.write_indices, "nonpad_kv_seqlen": step.nonpad_kv_seqlen}
        datasets.append(DataSet(inputs, outputs))
        key, value, key_s, value_s = (
            step.present_key,
            step.present_value,
            step.present_key_scale,
            step.present_value_scale,
        )
        positions = positions + seq
    return datasets


def _linear_case(
    seed: int, dtype: str, k_granularity: str, v_granularity: str | None = None, *, window: int = -1
) -> Case:
    rng = seeded(seed)
    k_quant = _quant(rng, dtype, k_granularity, keys=True)
    v_quant = _quant(rng, dtype, v_granularity or k_granularity, keys=False)
    opset = 25 if window >= 0 else 24
    model = build.quant_cache_step_model(
        k_quant, v_quant, q_heads=HQ, kv_heads=HKV, max_len=L, head_dim=D, opset=opset, left_window_size=window
    )
    attend = {"left_window_size": window, "right_window_size": 0} if window >= 0 else {}
    return Case(model, _datasets(k_quant, v_quant, rng, [3, 1], **attend), rtol=RTOL, atol=ATOL)


@case
def int8_per_tensor() -> Case:
    """int8 cache, one static scale per tensor for K and V; prefill 3 then decode 1, B=2."""
    return _linear_case(0, "int8", "per_tensor")


@case
def int8_per_channel() -> Case:
    """int8 cache, static per-(head, channel) scales [1,H,1,D] Expanded to the batch (blocked DQ over tokens)."""
    return _linear_case(1, "int8", "per_channel")


@case
def int8_per_token_scale_cache() -> Case:
    """int8 cache, dynamic per-token scales kept in a float32 scale cache [B,H,L,1] (2nd TensorScatter)."""
    return _linear_case(2, "int8", "per_token")


@case
def int8_per_token_group32() -> Case:
    """int8 cache, dynamic scales per token and 32 channels (q8_0-like), scale cache [B,H,L,D/32]."""
    return _linear_case(3, "int8", "per_token_group")


@case
def uint8_per_tensor_zero_point() -> Case:
    """uint8 cache, asymmetric: static per-tensor scale and uint8 zero point."""
    return _linear_case(4, "uint8", "per_tensor")


@case
def uint8_per_channel_zero_point() -> Case:
    """uint8 cache, asymmetric per (head, channel): scale and zero point [1,H,1,D], both Expanded."""
    return _linear_case(5, "uint8", "per_channel")


@case
def int4_keys_per_channel_values_per_token() -> Case:
    """ONNX int4 cache, KIVI's split: keys per (head, channel) static, values per token dynamic."""
    return _linear_case(6, "int4", "per_channel", "per_token")


@case
def int4_per_tensor() -> Case:
    """ONNX int4 cache (two's complement), one static scale per tensor."""
    return _linear_case(7, "int4", "per_tensor")


@case
def int4_per_token_group32() -> Case:
    """ONNX int4 cache, dynamic scales per token and 32 channels (q4_0-like)."""
    return _linear_case(8, "int4", "per_token_group")


@case
def float8e4m3fn_per_tensor() -> Case:
    """float8e4m3fn cache with one static scale per tensor (vLLM / TensorRT-LLM style)."""
    return _linear_case(9, "float8e4m3fn", "per_tensor")


@case
def float8e4m3fn_keys_per_channel_values_group32() -> Case:
    """float8e4m3fn cache, keys per (head, channel), values per token and 32 channels."""
    return _linear_case(10, "float8e4m3fn", "per_channel", "per_token_group")


@case
def float8e4m3fn_per_token() -> Case:
    """float8e4m3fn cache with dynamic per-token scales in a scale cache."""
    return _linear_case(11, "float8e4m3fn", "per_token")


@case
def int8_per_channel_attention25_window() -> Case:
    """int8 per-channel cache read through Attention-25 with left_window_size=2 (opset 25)."""
    return _linear_case(12, "int8", "per_channel", window=2)


def _circular_case(seed: int, dtype: str, granularity: str) -> Case:
    rng = seeded(seed)
    k_quant, v_quant = _quant(rng, dtype, granularity, keys=True), _quant(rng, dtype, granularity, keys=False)
    model = build.quant_cache_step_model(
        k_quant, v_quant, q_heads=HQ, kv_heads=HKV, max_len=L, head_dim=D, mode="circular"
    )
    # Tokens 6..9: slots 6, 7, then wrapped to 0, 1 (codes and scales alike); slots 0-5
    # start as zero codes (and scale 1), which the first two steps attend as real tokens.
    return Case(model, _datasets(k_quant, v_quant, rng, [1, 1, 1, 1], seen=6, mode="circular"), rtol=RTOL, atol=ATOL)


@case
def int8_per_channel_circular_wrap() -> Case:
    """Circular int8 cache (8 slots), per-channel scales, decode at t=6..9 wrapping to slots 0, 1."""
    return _circular_case(13, "int8", "per_channel")


@case
def int8_per_token_group32_circular_wrap() -> Case:
    """Circular int8 cache whose scale cache wraps with the codes (same write_indices, mode=circular)."""
    return _circular_case(14, "int8", "per_token_group")


def _fused(standard: Case) -> Case:
    """The same step and expectations with DQ + Attention fused into QuantizedAttention."""
    return dataclasses.replace(standard, model=function_op.fuse(standard.model))


@case
def op_int8_per_channel() -> Case:
    """QuantizedAttention function op on the int8 per-channel step (body: DQ + Attention-24)."""
    return _fused(int8_per_channel())


@case
def op_int8_per_token_group32() -> Case:
    """QuantizedAttention on the int8 step with dynamic group-32 scales read from the scale cache."""
    return _fused(int8_per_token_group32())


@case
def op_int4_keys_per_channel_values_per_token() -> Case:
    """QuantizedAttention on ONNX int4 codes, KIVI's split (keys per channel, values per token)."""
    return _fused(int4_keys_per_channel_values_per_token())


@case
def op_float8e4m3fn_per_tensor() -> Case:
    """QuantizedAttention on a float8e4m3fn cache with per-tensor scales."""
    return _fused(float8e4m3fn_per_tensor())
