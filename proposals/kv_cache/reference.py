"""numpy reference for the KV-cache pattern, written from the ONNX spec text.

- ``tensor_scatter``: TensorScatter-24 (onnx 1.23.2 schema text; circular mode wraps
  only the sequence index).
- ``attention_outputs``: Attention-23/24/25 (3-D or 4-D Q/K/V, past and present, every
  ``qk_matmul_output_mode``), with the errata of onnx#7297, #7867 and #8068 (softcap
  before the mask, bottom-right causal offset, zero output for a fully-masked row) and
  the opset-25 ``left/right_window_size`` of onnx#8108; ``attention`` returns its ``Y``.
  The project's one Attention reference: conformance/ fuzzes runtimes against it, and
  its tests check it against the loop reference ``proposals.paged_attention.reference.attend``.
- ``rotary_embedding``: RotaryEmbedding-23.
- Drivers: one decode step on a linear or a circular buffer, exactly as the graphs
  in :mod:`proposals.kv_cache.build` wire the ops, and loops over several steps.

Expected outputs of every kv_cache zoo case come from here, never from a runtime.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike


# --8<-- [start:tensor_scatter]
def tensor_scatter(
    past: np.ndarray,
    update: np.ndarray,
    write_indices: np.ndarray | None = None,
    *,
    axis: int = -2,
    mode: str = "linear",
) -> np.ndarray:
    """TensorScatter-24: write ``update`` into a copy of ``past`` along ``axis``.

    Sample ``b`` writes its ``S`` update rows at ``write_indices[b] + s``; in
    ``circular`` mode that sequence index (and only it) is taken modulo the cache length.
    """
    if mode not in ("linear", "circular"):
        raise ValueError(f"mode must be 'linear' or 'circular', got {mode!r}")
    axis = axis % past.ndim
    if axis == 0:
        raise ValueError("axis must not be the batch axis 0")
    max_len, seq = past.shape[axis], update.shape[axis]
    batch = past.shape[0]
    starts = np.zeros(batch, np.int64) if write_indices is None else np.asarray(write_indices)
    # Move the sequence axis next to the batch axis: index [b, s, ...rest].
    present = np.moveaxis(past.copy(), axis, 1)
    rows = np.moveaxis(update, axis, 1)
    slots = starts[:, None] + np.arange(seq)[None, :]  # [B, S]
    if mode == "circular":
        slots = slots % max_len
    elif (slots >= max_len).any() or (slots < 0).any():
        raise ValueError("linear mode needs 0 <= write_indices and write_indices + S <= max_len")
    present[np.arange(batch)[:, None], slots] = rows
    return np.moveaxis(present, 1, axis)


# --8<-- [end:tensor_scatter]


@dataclass(frozen=True)
class AttentionResult:
    """Every output of one Attention node."""

    y: np.ndarray
    present_key: np.ndarray
    present_value: np.ndarray
    qk: np.ndarray  # qk_matmul_output for the requested mode
    fully_masked: bool = False  # some query row attends no key


# --8<-- [start:attention]
def attention_outputs(
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
    is_causal: bool | int = False,
    scale: float | None = None,
    softcap: float = 0.0,
    qk_matmul_output_mode: int = 0,
    left_window_size: int = -1,
    right_window_size: int = -1,
) -> AttentionResult:
    """Attention-23/24/25 with the errata (onnx#7297, #7867, #8068) and windows (#8108).

    Q is ``(B, Hq, Sq, D)`` or ``(B, Sq, Hq*D)`` (then ``q_num_heads``), K and V likewise
    with ``kv_num_heads``. Scores are ``scale * Q K^T`` (mode 0), then
    ``softcap*tanh(x/softcap)`` before any mask (mode 1), then the bias: the float mask
    plus ``-inf`` wherever a key is not allowed (mode 2), then softmax, a fully-masked row
    being all zeros (mode 3). Key ``j`` is allowed for query ``i`` of sample ``b`` if it is
    below ``nonpad_kv_seqlen[b]``, if ``j <= p`` when causal, if ``p - left <= j <= p + right``
    for the bounded window sides (``p = i + offset``), and where a bool mask is True.
    ``offset`` is the past length with ``past_key``, ``nonpad_kv_seqlen[b] - Sq`` with an
    external cache, else 0. Query head ``h`` reads kv head ``h // (Hq / Hkv)``.
    """
    three_d = q.ndim == 3
    q4, k4, v4 = _to_4d(q, q_num_heads), _to_4d(k, kv_num_heads), _to_4d(v, kv_num_heads)
    if past_key is not None:
        k4 = np.concatenate([past_key, k4], axis=2)
        v4 = np.concatenate([past_value, v4], axis=2)
    batch, q_heads, q_len, head = q4.shape
    kv_heads, total = k4.shape[1], k4.shape[2]
    if q_heads % kv_heads:
        raise ValueError(f"q heads ({q_heads}) must be a multiple of kv heads ({kv_heads})")
    group = q_heads // kv_heads
    kk = np.repeat(k4.astype(np.float64), group, axis=1)  # GQA: q head h reads kv head h // group
    vv = np.repeat(v4.astype(np.float64), group, axis=1)
    scale = 1.0 / np.sqrt(head) if scale is None else scale

    raw = np.einsum("bhqd,bhkd->bhqk", q4.astype(np.float64), kk) * scale
    capped = softcap * np.tanh(raw / softcap) if softcap > 0 else raw  # before any mask (onnx#7867)

    if past_key is not None:
        offset = np.full(batch, past_key.shape[2])
    elif nonpad_kv_seqlen is not None:
        offset = np.asarray(nonpad_kv_seqlen) - q_len
    else:
        offset = np.zeros(batch, np.int64)
    pos = (offset[:, None] + np.arange(q_len)[None, :])[:, None, :, None]  # absolute query position [B, 1, Sq, 1]
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
        mask = _pad_mask(attn_mask, total)
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


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    attn_mask: np.ndarray | None = None,
    past_key: np.ndarray | None = None,
    past_value: np.ndarray | None = None,
    nonpad_kv_seqlen: np.ndarray | None = None,
    **attributes: Any,
) -> np.ndarray:
    """Attention's output ``Y`` alone (:func:`attention_outputs` has every output)."""
    return attention_outputs(q, k, v, attn_mask, past_key, past_value, nonpad_kv_seqlen, **attributes).y


def _to_4d(x: np.ndarray, heads: int) -> np.ndarray:
    """(B, S, H*D) -> (B, H, S, D); 4-D inputs pass through."""
    if x.ndim == 4:
        return x
    batch, seq, hidden = x.shape
    return x.reshape(batch, seq, heads, hidden // heads).transpose(0, 2, 1, 3)


def _pad_mask(mask: np.ndarray, total: int) -> np.ndarray:
    """A mask shorter than the key length is padded with "not allowed" (Attention-24)."""
    short = total - mask.shape[-1]
    if short <= 0:
        return mask
    fill = False if mask.dtype == bool else -np.inf
    pad = np.full((*mask.shape[:-1], short), fill, dtype=mask.dtype)
    return np.concatenate([mask, pad], axis=-1)


# --8<-- [end:attention]


# --8<-- [start:rotary]
def rotary_embedding(
    x: np.ndarray,
    cos_cache: np.ndarray,
    sin_cache: np.ndarray,
    position_ids: np.ndarray | None = None,
    *,
    interleaved: bool = False,
    rotary_embedding_dim: int = 0,
    num_heads: int = 0,
) -> np.ndarray:
    """RotaryEmbedding-23 on ``x (B,H,S,D)`` or ``x (B,S,H*D)`` (then ``num_heads`` is needed).

    Each pair ``(x1, x2)`` of the first ``rotary_embedding_dim`` channels is rotated by
    the angle of its token's position: halves ``[0, d/2)``/``[d/2, d)``, or even/odd
    channels when ``interleaved``. Caches are ``(max_pos, d/2)`` indexed by
    ``position_ids``, or already ``(B, S, d/2)`` without them.
    """
    if x.ndim == 3:
        batch, seq, hidden = x.shape
        heads = x.reshape(batch, seq, num_heads, hidden // num_heads).transpose(0, 2, 1, 3)
        out = rotary_embedding(
            heads,
            cos_cache,
            sin_cache,
            position_ids,
            interleaved=interleaved,
            rotary_embedding_dim=rotary_embedding_dim,
        )
        return out.transpose(0, 2, 1, 3).reshape(x.shape)
    dim = rotary_embedding_dim or x.shape[-1]
    if position_ids is not None:
        cos_cache, sin_cache = cos_cache[position_ids], sin_cache[position_ids]
    cos = cos_cache[:, None].astype(np.float64)  # [B, 1, S, d/2], broadcast over heads
    sin = sin_cache[:, None].astype(np.float64)
    rot = x[..., :dim].astype(np.float64)
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
    else:
        x1, x2 = rot[..., : dim // 2], rot[..., dim // 2 :]
    real, imag = x1 * cos - x2 * sin, x1 * sin + x2 * cos
    if interleaved:
        rotated = np.stack([real, imag], axis=-1).reshape(rot.shape)
    else:
        rotated = np.concatenate([real, imag], axis=-1)
    return np.concatenate([rotated.astype(x.dtype), x[..., dim:]], axis=-1)


def rope_caches(max_positions: int, rotary_dim: int, base: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """The usual cos/sin tables ``(max_positions, rotary_dim/2)`` of RoPE (Su et al. 2021)."""
    inv_freq = base ** (-np.arange(0, rotary_dim, 2, dtype=np.float64) / rotary_dim)
    angles = np.arange(max_positions, dtype=np.float64)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


# --8<-- [end:rotary]


# --8<-- [start:drivers]
QKV = tuple[np.ndarray, np.ndarray, np.ndarray]  # one step's new q, k, v, each (B, H, S, D)


@dataclass(frozen=True)
class Step:
    """What one cache step feeds the graph and what it gets back."""

    write_indices: np.ndarray  # int64 [B]
    nonpad_kv_seqlen: np.ndarray  # int64 [B]
    y: np.ndarray
    present_key: np.ndarray
    present_value: np.ndarray


def linear_step(
    past_key: np.ndarray,
    past_value: np.ndarray,
    lengths: ArrayLike,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    **attention_kwargs: Any,
) -> Step:
    """One step on a linear buffer: sample ``b`` holds ``lengths[b]`` tokens already.

    Prefill (``lengths == 0``) and decode are the same step: write at ``lengths``,
    then attend over the whole buffer with ``nonpad_kv_seqlen = lengths + S``.
    """
    write = np.asarray(lengths, np.int64)
    nonpad = write + q.shape[2]
    key = tensor_scatter(past_key, k, write)
    value = tensor_scatter(past_value, v, write)
    y = attention(q, key, value, nonpad_kv_seqlen=nonpad, is_causal=True, **attention_kwargs)
    return Step(write, nonpad, y, key, value)


def circular_step(
    past_key: np.ndarray,
    past_value: np.ndarray,
    seen: ArrayLike,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    **attention_kwargs: Any,
) -> Step:
    """One decode step (one token) on a circular buffer of ``L`` slots.

    ``seen[b]`` tokens came before; the new one goes to slot ``seen % L`` and the query
    attends the ``min(seen + 1, L)`` valid slots. Slot order does not matter for a
    single query, so this is sliding-window attention over the last ``L`` tokens.
    """
    if q.shape[2] != 1:
        raise ValueError("circular_step takes one token; split longer chunks (see the README)")
    slots = past_key.shape[2]
    write = np.asarray(seen, np.int64)
    nonpad = np.minimum(write + 1, slots)
    key = tensor_scatter(past_key, k, write, mode="circular")
    value = tensor_scatter(past_value, v, write, mode="circular")
    y = attention(q, key, value, nonpad_kv_seqlen=nonpad, is_causal=True, **attention_kwargs)
    return Step(write, nonpad, y, key, value)


def run_linear(
    chunks: Iterable[QKV], past_key: np.ndarray, past_value: np.ndarray, lengths: ArrayLike | None = None
) -> list[Step]:
    """Feed ``(q, k, v)`` chunks one after another through a linear buffer."""
    lengths = np.zeros(past_key.shape[0], np.int64) if lengths is None else np.asarray(lengths)
    steps = []
    for q, k, v in chunks:
        step = linear_step(past_key, past_value, lengths, q, k, v)
        steps.append(step)
        past_key, past_value, lengths = step.present_key, step.present_value, step.nonpad_kv_seqlen
    return steps


def run_circular(
    tokens: Iterable[QKV], past_key: np.ndarray, past_value: np.ndarray, seen: ArrayLike | None = None
) -> list[Step]:
    """Feed single-token ``(q, k, v)`` steps one after another through a circular buffer."""
    seen = np.zeros(past_key.shape[0], np.int64) if seen is None else np.asarray(seen)
    steps = []
    for q, k, v in tokens:
        step = circular_step(past_key, past_value, seen, q, k, v)
        steps.append(step)
        past_key, past_value, seen = step.present_key, step.present_value, seen + 1
    return steps


# --8<-- [end:drivers]


# --8<-- [start:decoder_layer]
def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight.astype(np.float64)


def decoder_layer(
    weights,
    cos_cache,
    sin_cache,
    hidden_states,
    position_ids,
    past_key,
    past_value,
    write_indices,
    nonpad_kv_seqlen,
    *,
    q_heads: int,
    kv_heads: int,
) -> Step:
    """The attention block of :func:`proposals.kv_cache.build.attention_block`.

    Projections (+ biases), per-head RMSNorm where given, RoPE on Q and K, linear
    TensorScatter of the rotated K and V, causal GQA attention over the whole cache,
    output projection. ``Step.y`` is ``output``. Computed in float64 (a float32 matmul
    rounds differently per BLAS kernel) and cast once: the caches on assignment, ``y``
    at the end.
    """
    batch, seq, _ = hidden_states.shape
    x = hidden_states.astype(np.float64)

    def linear(h, w, bias):
        y = h @ w.astype(np.float64)
        return y if bias is None else y + bias.astype(np.float64)

    def heads(w, bias, n, norm=None):  # (B, S, n*D) -> (B, n, S, D)
        y = linear(x, w, bias).reshape(batch, seq, n, -1)
        y = y if norm is None else _rms_norm(y, norm, weights.norm_epsilon)
        return y.transpose(0, 2, 1, 3)

    q = heads(weights.q_proj, weights.q_bias, q_heads, weights.q_norm)
    k = heads(weights.k_proj, weights.k_bias, kv_heads, weights.k_norm)
    q = rotary_embedding(q, cos_cache, sin_cache, position_ids)
    k = rotary_embedding(k, cos_cache, sin_cache, position_ids)
    v = heads(weights.v_proj, weights.v_bias, kv_heads)
    key = tensor_scatter(past_key, k, write_indices)
    value = tensor_scatter(past_value, v, write_indices)
    y = attention(q, key, value, nonpad_kv_seqlen=nonpad_kv_seqlen, is_causal=True, scale=weights.scale)
    merged = y.transpose(0, 2, 1, 3).reshape(batch, seq, -1)
    out = linear(merged, weights.o_proj, weights.o_bias).astype(hidden_states.dtype)
    return Step(np.asarray(write_indices), np.asarray(nonpad_kv_seqlen), out, key, value)


# --8<-- [end:decoder_layer]


def decoder_layer_steps(
    weights, cos_cache, sin_cache, hidden_chunks, *, q_heads: int, kv_heads: int, max_len: int
) -> list[tuple[np.ndarray, np.ndarray, Step]]:
    """Chunks of new tokens (each (B, S, hidden)) through :func:`decoder_layer`, one after another,
    from an empty linear cache of ``max_len`` slots: ``(hidden_states, position_ids, step)`` each.

    Each step's past caches are the previous step's present ones.
    """
    batch = hidden_chunks[0].shape[0]
    head_dim = weights.k_proj.shape[1] // kv_heads
    past_key = np.zeros((batch, kv_heads, max_len, head_dim), np.float32)
    past_value = np.zeros_like(past_key)
    lengths = np.zeros(batch, np.int64)
    steps = []
    for hidden_states in hidden_chunks:
        seq = hidden_states.shape[1]
        positions = lengths[:, None] + np.arange(seq)[None, :]
        step = decoder_layer(
            weights,
            cos_cache,
            sin_cache,
            hidden_states,
            positions,
            past_key,
            past_value,
            lengths,
            lengths + seq,
            q_heads=q_heads,
            kv_heads=kv_heads,
        )
        steps.append((hidden_states, positions, step))
        past_key, past_value, lengths = step.present_key, step.present_value, lengths + seq
    return steps
