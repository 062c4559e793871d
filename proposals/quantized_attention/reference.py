"""numpy reference for a quantized KV cache: quantize on write, dequantize on read.

Written from the QuantizeLinear-21/23/24 and DequantizeLinear-21/23/24 schema text
(onnx 1.23.2) and applied to a ``[B, H, L, D]`` cache:

- **Quantize** ``q = saturate(round_half_even(x / scale) + zero_point)``; the division
  is done in the scale's type (float32), as Q-23's ``precision`` default says.
- **Dequantize** ``x' = (q - zero_point) * scale``, in float32.
- **Saturation** clamps to the code range (int8 [-128, 127], uint8 [0, 255], int4
  [-8, 7]); float8e4m3fn clamps to ±448 (``saturate=1``), keeps NaN, and rounds to
  the nearest representable value, ties to even.
- **Granularities** (``G`` = head_dim for a whole token, or 32 for groups):

  ======================  ================  =========================  ==============
  granularity             scale shape       DequantizeLinear           scales are
  ======================  ================  =========================  ==============
  ``per_tensor``          ``[]``            per tensor                 static
  ``per_channel``         ``[1, H, 1, D]``  ``axis=2, block_size=L``   static
  ``per_token``           ``[B, H, L, 1]``  ``axis=3, block_size=D``   dynamic (cache)
  ``per_token_group``     ``[B, H, L, D/32]`` ``axis=3, block_size=32`` dynamic (cache)
  ======================  ================  =========================  ==============

  A dynamic scale is ``max(amax / qmax, tiny)`` over the token's (group of) channels,
  with ``qmax`` = 127, 7 or 448 and ``tiny`` the smallest normal float32, so that an
  all-zero row gets a positive scale. It is computed when the row is written and kept
  in a float32 *scale cache* beside the code cache, written at the same slots.
- uint8 is asymmetric (a uint8 zero point, static granularities only: a dynamic zero
  point would need a third cache); int8, int4 and float8e4m3fn are symmetric.
- int4 is ONNX ``int4``: two's complement, packed two per byte, element 0 in the low
  nibble. ORT's ``GroupQueryAttention`` 4-bit cache is *not* that: it stores ``code + 8``
  (offset binary) in a uint8 with the last dimension halved (:func:`to_gqa_int4`).

Expected outputs of every quantized_attention zoo case come from here and from the
kv_cache proposal's float64 attention reference, never from a runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
from numpy.typing import ArrayLike

from generator.errors import UsageError
from proposals.kv_cache.reference import attention, tensor_scatter

GROUP = 32  # channels per scale group of per_token_group (llama.cpp q8_0 / q4_0 blocks)
TINY = np.float32(np.finfo(np.float32).tiny)


@dataclass(frozen=True)
class Format:
    """A code type: its numpy dtype, range and whether it takes a zero point."""

    name: str
    dtype: np.dtype
    qmin: float
    qmax: float
    asymmetric: bool = False


# --8<-- [start:formats]
FORMATS: dict[str, Format] = {
    "int8": Format("int8", np.dtype(np.int8), -128, 127),
    "uint8": Format("uint8", np.dtype(np.uint8), 0, 255, asymmetric=True),
    "int4": Format("int4", np.dtype(ml_dtypes.int4), -8, 7),
    "float8e4m3fn": Format("float8e4m3fn", np.dtype(ml_dtypes.float8_e4m3fn), -448.0, 448.0),
}
STATIC = ("per_tensor", "per_channel")
DYNAMIC = ("per_token", "per_token_group")
GRANULARITIES = STATIC + DYNAMIC
# --8<-- [end:formats]


def _format(dtype: str) -> Format:
    if dtype not in FORMATS:
        raise UsageError(f"unsupported cache dtype {dtype!r}; valid: {', '.join(FORMATS)}")
    return FORMATS[dtype]


def valid_pairs() -> list[tuple[str, str]]:
    """Every (dtype, granularity) the reference defines."""
    return [(d, g) for d in FORMATS for g in GRANULARITIES if not (FORMATS[d].asymmetric and g in DYNAMIC)]


def check_pair(dtype: str, granularity: str) -> Format:
    """The dtype's :class:`Format`, or a one-line UsageError naming what is valid."""
    fmt = _format(dtype)
    if granularity not in GRANULARITIES:
        raise UsageError(f"unsupported granularity {granularity!r}; valid: {', '.join(GRANULARITIES)}")
    if fmt.asymmetric and granularity in DYNAMIC:
        raise UsageError(
            f"{dtype} × {granularity} is not defined (a dynamic zero point needs a third cache); "
            f"valid for {dtype}: {', '.join(STATIC)}"
        )
    return fmt


# --8<-- [start:quantize]
def quantize(x: np.ndarray, scale: ArrayLike, zero_point: ArrayLike | None, dtype: str) -> np.ndarray:
    """QuantizeLinear with a scale (and zero point) already broadcastable to ``x``."""
    fmt = _format(dtype)
    scale = np.asarray(scale, np.float32)
    ratio = np.asarray(x, np.float32) / scale  # float32 division: Q-23's default precision
    if fmt.name == "float8e4m3fn":
        # saturate=1: clamp to ±448 (NaN stays NaN), then round to nearest, ties to even.
        return np.clip(ratio, fmt.qmin, fmt.qmax).astype(fmt.dtype)
    codes = np.rint(ratio.astype(np.float64))  # np.rint rounds half to even
    if zero_point is not None:
        codes = codes + np.asarray(zero_point).astype(np.float64)
    return np.clip(codes, fmt.qmin, fmt.qmax).astype(np.int64).astype(fmt.dtype)


def dequantize(codes: np.ndarray, scale: ArrayLike, zero_point: ArrayLike | None = None) -> np.ndarray:
    """DequantizeLinear: ``(codes - zero_point) * scale`` as float32 (exact in float64)."""
    values = codes.astype(np.float64)
    if zero_point is not None:
        values = values - np.asarray(zero_point).astype(np.float64)
    return (values * np.asarray(scale, np.float64)).astype(np.float32)


# --8<-- [end:quantize]


# --8<-- [start:scales]
def dynamic_scale(x: np.ndarray, granularity: str, dtype: str) -> np.ndarray:
    """Per-row scales of new cache rows ``x [B, H, S, D]``: ``[B, H, S, D // G]``."""
    fmt = check_pair(dtype, granularity)
    if granularity not in DYNAMIC:
        raise UsageError(f"dynamic scales are for {', '.join(DYNAMIC)}, not {granularity!r}")
    group = _group(granularity, x.shape[-1])
    blocks = np.abs(x.astype(np.float32)).reshape(*x.shape[:-1], x.shape[-1] // group, group)
    amax = blocks.max(axis=-1)
    return np.maximum(amax / np.float32(fmt.qmax), TINY).astype(np.float32)


def calibrate(sample: np.ndarray, granularity: str, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Static (scale, zero point) from a calibration sample ``[B, H, S, D]``.

    ``per_tensor`` reduces over everything, ``per_channel`` over batch and tokens
    (one scale per (head, channel), shape ``[1, H, 1, D]``). uint8 maps [min, max]
    (widened to include 0) onto [0, 255]; the others map [-amax, amax] symmetrically.
    """
    fmt = check_pair(dtype, granularity)
    if granularity not in STATIC:
        raise UsageError(f"calibrated scales are for {', '.join(STATIC)}, not {granularity!r}")
    axes = (0, 1, 2, 3) if granularity == "per_tensor" else (0, 2)
    sample = sample.astype(np.float32)
    if fmt.asymmetric:
        low = np.minimum(sample.min(axis=axes, keepdims=True), 0)
        high = np.maximum(sample.max(axis=axes, keepdims=True), 0)
        scale = np.maximum((high - low) / np.float32(255), TINY).astype(np.float32)
        zero = np.clip(np.rint(-low.astype(np.float64) / scale), 0, 255).astype(np.uint8)
    else:
        amax = np.abs(sample).max(axis=axes, keepdims=True)
        scale, zero = np.maximum(amax / np.float32(fmt.qmax), TINY).astype(np.float32), None
    if granularity == "per_tensor":
        return scale.reshape(()), None if zero is None else zero.reshape(())
    return scale, zero


# --8<-- [end:scales]


def _group(granularity: str, head_dim: int) -> int:
    if granularity == "per_token":
        return head_dim
    if head_dim % GROUP:
        raise UsageError(f"per_token_group needs head_dim divisible by {GROUP}, got {head_dim}")
    return GROUP


@dataclass(frozen=True)
class CacheQuant:
    """How one cache (keys or values) is stored: dtype, granularity, static scales.

    Static granularities carry ``scale`` (``[]`` or ``[1, H, 1, D]``) and, for uint8,
    ``zero_point`` of the same shape; dynamic ones carry neither (they use a scale cache).
    """

    dtype: str
    granularity: str
    scale: np.ndarray | None = None
    zero_point: np.ndarray | None = None

    def __post_init__(self) -> None:
        fmt = check_pair(self.dtype, self.granularity)
        if self.granularity in DYNAMIC:
            if self.scale is not None or self.zero_point is not None:
                raise UsageError(f"{self.granularity} scales are computed per row; pass no scale or zero_point")
            return
        if self.scale is None:
            raise UsageError(f"{self.granularity} needs a static scale (see calibrate())")
        scale = np.asarray(self.scale)
        if scale.dtype != np.float32:
            raise UsageError(f"scale must be float32, got {scale.dtype}")
        if self.granularity == "per_tensor" and scale.shape != ():
            raise UsageError(f"per_tensor scale must have shape [], got {list(scale.shape)}")
        if self.granularity == "per_channel" and (scale.ndim != 4 or scale.shape[0] != 1 or scale.shape[2] != 1):
            raise UsageError(f"per_channel scale must have shape [1, H, 1, D], got {list(scale.shape)}")
        if not (np.isfinite(scale).all() and (scale > 0).all()):
            raise UsageError("scales must be finite and > 0 (a zero or negative scale has no inverse)")
        if fmt.asymmetric != (self.zero_point is not None):
            need = "needs a uint8 zero_point" if fmt.asymmetric else "is symmetric: pass no zero_point"
            raise UsageError(f"{self.dtype} {need}")
        if self.zero_point is not None:
            zero = np.asarray(self.zero_point)
            if zero.dtype != np.uint8 or zero.shape != scale.shape:
                raise UsageError(f"zero_point must be uint8 with the scale's shape {list(scale.shape)}")

    @property
    def format(self) -> Format:
        return FORMATS[self.dtype]

    @property
    def dynamic(self) -> bool:
        return self.granularity in DYNAMIC

    def scale_cache_shape(self, batch: int, heads: int, max_len: int, head_dim: int) -> tuple[int, ...]:
        """Shape of the scale cache a dynamic granularity needs: ``[B, H, L, D // G]``."""
        return (batch, heads, max_len, head_dim // _group(self.granularity, head_dim))

    def check_cache(self, cache: np.ndarray, scales: np.ndarray | None) -> None:
        """A one-line error when the code cache or scale cache has the wrong type or shape."""
        if cache.ndim != 4 or cache.dtype != self.format.dtype:
            raise UsageError(f"cache must be {self.dtype} [B, H, L, D], got {cache.dtype} {list(cache.shape)}")
        batch, heads, max_len, head_dim = cache.shape
        if self.dynamic:
            want = self.scale_cache_shape(batch, heads, max_len, head_dim)
            if scales is None or scales.shape != want or scales.dtype != np.float32:
                got = None if scales is None else list(scales.shape)
                raise UsageError(f"{self.granularity} needs a float32 scale cache of shape {list(want)}, got {got}")
            if not (scales > 0).all():
                raise UsageError("scale cache entries must be > 0 (initialise empty slots to 1)")
        elif self.granularity == "per_channel" and self.scale.shape[1:] != (heads, 1, head_dim):
            raise UsageError(
                f"per_channel scale must have shape [1, {heads}, 1, {head_dim}], got {list(self.scale.shape)}"
            )


# --8<-- [start:rows]
def _per_element(quant: CacheQuant, scales: np.ndarray | None, head_dim: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Scale (and zero point) broadcastable to the cache rows they belong to."""
    if quant.dynamic:
        return np.repeat(scales, _group(quant.granularity, head_dim), axis=-1), None
    return quant.scale, quant.zero_point


def quantize_rows(quant: CacheQuant, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """New rows ``[B, H, S, D]`` -> (codes, their scale rows or None for static scales)."""
    scales = dynamic_scale(rows, quant.granularity, quant.dtype) if quant.dynamic else None
    scale, zero = _per_element(quant, scales, rows.shape[-1])
    return quantize(rows, scale, zero, quant.dtype), scales


def dequantize_cache(quant: CacheQuant, cache: np.ndarray, scales: np.ndarray | None = None) -> np.ndarray:
    """The float32 cache Attention reads: every slot dequantized with its own scale."""
    quant.check_cache(cache, scales)
    scale, zero = _per_element(quant, scales, cache.shape[-1])
    return dequantize(cache, scale, zero)


# --8<-- [end:rows]


def empty_cache(quant: CacheQuant, batch: int, heads: int, max_len: int, head_dim: int):
    """Zero codes (at the zero point) and, for dynamic scales, a scale cache of ones."""
    fill = 0 if quant.zero_point is None else quant.zero_point
    codes = np.broadcast_to(np.asarray(fill).astype(quant.format.dtype), (batch, heads, max_len, head_dim)).copy()
    if not quant.dynamic:
        return codes, None
    return codes, np.ones(quant.scale_cache_shape(batch, heads, max_len, head_dim), np.float32)


# --8<-- [start:step]
@dataclass(frozen=True)
class QuantStep:
    """One step's graph feeds and expected outputs (caches quantized, scales cached)."""

    write_indices: np.ndarray
    nonpad_kv_seqlen: np.ndarray
    y: np.ndarray
    present_key: np.ndarray
    present_value: np.ndarray
    present_key_scale: np.ndarray | None
    present_value_scale: np.ndarray | None


def cache_step(
    k_quant: CacheQuant,
    v_quant: CacheQuant,
    past: tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None],
    positions: ArrayLike,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    *,
    mode: str = "linear",
    **attention_kwargs,
) -> QuantStep:
    """Quantize new K/V, scatter codes (and scales), dequantize the caches, attend.

    ``past`` is (key codes, value codes, key scale cache, value scale cache).
    ``positions[b]`` is how many tokens sample ``b`` has seen: the write index; a
    circular cache of ``L`` slots writes at ``positions % L`` and attends
    ``min(positions + S, L)`` slots, a linear one ``positions + S``.
    """
    past_k, past_v, past_ks, past_vs = past
    k_quant.check_cache(past_k, past_ks)
    v_quant.check_cache(past_v, past_vs)
    write = np.asarray(positions, np.int64)
    nonpad = write + q.shape[2]
    if mode == "circular":
        nonpad = np.minimum(nonpad, past_k.shape[2])
    k_codes, k_scales = quantize_rows(k_quant, k)
    v_codes, v_scales = quantize_rows(v_quant, v)
    key = tensor_scatter(past_k, k_codes, write, axis=2, mode=mode)
    value = tensor_scatter(past_v, v_codes, write, axis=2, mode=mode)
    key_s = None if k_scales is None else tensor_scatter(past_ks, k_scales, write, axis=2, mode=mode)
    value_s = None if v_scales is None else tensor_scatter(past_vs, v_scales, write, axis=2, mode=mode)
    y = attention(
        q,
        dequantize_cache(k_quant, key, key_s),
        dequantize_cache(v_quant, value, value_s),
        nonpad_kv_seqlen=nonpad,
        is_causal=True,
        **attention_kwargs,
    )
    return QuantStep(write, nonpad, y, key, value, key_s, value_s)


# --8<-- [end:step]


# --8<-- [start:int4]
def pack_int4(codes: np.ndarray) -> np.ndarray:
    """ONNX int4 storage: two's complement nibbles, element 0 in the low nibble (flat)."""
    nibbles = codes.astype(np.int8).reshape(-1).astype(np.uint8) & 0x0F
    if nibbles.size % 2:
        nibbles = np.append(nibbles, np.uint8(0))
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def to_gqa_int4(codes: np.ndarray) -> np.ndarray:
    """ORT GroupQueryAttention's 4-bit cache: ``code + 8`` nibbles, last dim halved."""
    if codes.shape[-1] % 2:
        raise UsageError(f"a 4-bit GQA cache needs an even head size, got {codes.shape[-1]}")
    biased = (codes.astype(np.int16) + 8).astype(np.uint8)
    return (biased[..., 0::2] | (biased[..., 1::2] << 4)).astype(np.uint8)


def from_gqa_int4(packed: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_gqa_int4`: ONNX int4 codes with the last dim doubled."""
    low = (packed & 0x0F).astype(np.int16) - 8
    high = (packed >> 4).astype(np.int16) - 8
    return np.stack([low, high], axis=-1).reshape(*packed.shape[:-1], -1).astype(ml_dtypes.int4)


# --8<-- [end:int4]
