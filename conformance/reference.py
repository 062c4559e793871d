"""float64 references of the standard GenAI ops, written from the onnx 1.23.2 schema text.

TensorScatter-24 and RotaryEmbedding-23 are the kv_cache topic's references, LinearAttention-27
the linear_attention topic's (the same spec text; one implementation each). Attention here
covers what the fuzzer draws beyond the kv_cache pattern: 3-D inputs, past/present, a value head size of its own,
every ``qk_matmul_output_mode``, float masks and ``softmax_precision``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from proposals.kv_cache.reference import rotary_embedding, tensor_scatter
from proposals.linear_attention.reference import RULES as LINEAR_ATTENTION_RULES
from proposals.linear_attention.reference import linear_attention

__all__ = [
    "LINEAR_ATTENTION_RULES",
    "AttentionResult",
    "attention",
    "linear_attention",
    "rms_normalization",
    "rotary_embedding",
    "swiglu",
    "tensor_scatter",
]


@dataclass(frozen=True)
class AttentionResult:
    y: np.ndarray
    present_key: np.ndarray
    present_value: np.ndarray
    qk: np.ndarray  # qk_matmul_output for the requested mode
    fully_masked: bool = False  # some query row attends no key


def _to_4d(x: np.ndarray, heads: int) -> np.ndarray:
    """(B, S, H*D) -> (B, H, S, D); 4-D inputs pass through."""
    if x.ndim == 4:
        return x
    batch, seq, hidden = x.shape
    return x.reshape(batch, seq, heads, hidden // heads).transpose(0, 2, 1, 3)


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    attn_mask: np.ndarray | None = None,
    past_key: np.ndarray | None = None,
    past_value: np.ndarray | None = None,
    nonpad_kv_seqlen: np.ndarray | None = None,
    *,
    q_num_heads: int = 0,
    kv_num_heads: int = 0,
    is_causal: int = 0,
    scale: float | None = None,
    softcap: float = 0.0,
    qk_matmul_output_mode: int = 0,
    left_window_size: int = -1,
    right_window_size: int = -1,
) -> AttentionResult:
    """Attention-23/24/25 with the errata (onnx#7297, #7867, #8068) and windows (#8108).

    Scores are ``scale * Q K^T`` (mode 0), then ``softcap*tanh(x/softcap)`` (mode 1),
    then the bias: the float mask plus ``-inf`` wherever a key is not allowed (mode 2),
    then softmax, a fully-masked row being all zeros (mode 3). A key ``j`` is allowed
    for query ``i`` of sample ``b`` if it is below ``nonpad_kv_seqlen[b]``, if
    ``j <= p`` when causal, if ``p - left <= j <= p + right`` for the bounded window
    sides (``p = i + offset``), and where a bool mask is True. ``offset`` is the past
    length with ``past_key``, ``nonpad_kv_seqlen[b] - Sq`` with an external cache, else 0.
    """
    three_d = q.ndim == 3
    q4, k4, v4 = _to_4d(q, q_num_heads), _to_4d(k, kv_num_heads), _to_4d(v, kv_num_heads)
    if past_key is not None:
        k4 = np.concatenate([past_key, k4], axis=2)
        v4 = np.concatenate([past_value, v4], axis=2)
    batch, q_heads, q_len, head = q4.shape
    kv_heads, total = k4.shape[1], k4.shape[2]
    group = q_heads // kv_heads
    kk = np.repeat(k4.astype(np.float64), group, axis=1)  # q head h reads kv head h // group
    vv = np.repeat(v4.astype(np.float64), group, axis=1)
    scale = 1.0 / np.sqrt(head) if scale is None else scale

    raw = np.einsum("bhqd,bhkd->bhqk", q4.astype(np.float64), kk) * scale
    capped = softcap * np.tanh(raw / softcap) if softcap > 0 else raw

    if past_key is not None:
        offset = np.full(batch, past_key.shape[2])
    elif nonpad_kv_seqlen is not None:
        offset = np.asarray(nonpad_kv_seqlen) - q_len
    else:
        offset = np.zeros(batch, np.int64)
    pos = (offset[:, None] + np.arange(q_len)[None, :])[:, None, :, None]  # [B, 1, Sq, 1]
    key = np.arange(total)[None, None, None, :]
    allowed = np.ones((batch, q_heads, q_len, total), bool)
    if nonpad_kv_seqlen is not None:
        allowed &= key < np.asarray(nonpad_kv_seqlen)[:, None, None, None]
    if is_causal:
        allowed &= key <= pos
    if left_window_size >= 0:
        allowed &= key >= pos - left_window_size
    if right_window_size >= 0:
        allowed &= key <= pos + right_window_size
    bias = np.zeros_like(capped)
    if attn_mask is not None:
        mask = attn_mask
        if mask.shape[-1] < total:  # a short mask is padded with "not allowed" (Attention-24)
            fill = False if mask.dtype == bool else -np.inf
            mask = np.concatenate([mask, np.full((*mask.shape[:-1], total - mask.shape[-1]), fill, mask.dtype)], -1)
        if mask.dtype == bool:
            allowed &= np.broadcast_to(mask, allowed.shape)
        else:
            bias = bias + np.broadcast_to(mask.astype(np.float64), bias.shape)
    biased = np.where(allowed, capped + bias, -np.inf)

    row_max = biased.max(axis=-1, keepdims=True)
    empty = ~np.isfinite(row_max)  # a fully-masked row gives zeros, not NaN (onnx#8068)
    weights = np.exp(biased - np.where(empty, 0.0, row_max))
    weights = np.where(empty, 0.0, weights / np.where(empty, 1.0, weights.sum(axis=-1, keepdims=True)))
    y = np.einsum("bhqk,bhkd->bhqd", weights, vv)
    if three_d:
        y = y.transpose(0, 2, 1, 3).reshape(batch, q_len, -1)
    qk = (raw, capped, biased, weights)[qk_matmul_output_mode]
    dtype = q.dtype
    return AttentionResult(y.astype(dtype), k4.astype(dtype), v4.astype(dtype), qk.astype(dtype), bool(empty.any()))


def rms_normalization(x: np.ndarray, scale: np.ndarray, *, axis: int = -1, epsilon: float = 1e-5) -> np.ndarray:
    """RMSNormalization-23: ``x / sqrt(mean(x^2 over axes [axis, rank)) + epsilon) * scale``."""
    axes = tuple(range(axis % x.ndim, x.ndim))
    x64 = x.astype(np.float64)
    rms = np.sqrt((x64 * x64).mean(axis=axes, keepdims=True) + epsilon)
    return (x64 / rms * scale.astype(np.float64)).astype(x.dtype)


def swiglu(a: np.ndarray, b: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """SwiGLU-28: ``Y = Swish_alpha(A) * B`` with ``Swish_alpha(a) = a * sigmoid(alpha * a)``."""
    a64 = a.astype(np.float64)
    return (a64 / (1.0 + np.exp(-alpha * a64)) * b.astype(np.float64)).astype(a.dtype)
