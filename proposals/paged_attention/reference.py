"""Numpy paged-attention reference, written from the semantics in README.md.

It loops over sequences and tokens on purpose: it reads each sequence's keys
block by block through ``block_table`` and never builds the padded tensors the
ONNX graph builds, so it checks the graph rather than restating it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PagedResult:
    """What one PagedAttention step returns."""

    y: np.ndarray  # [T, Hq * Dv]
    key_cache: np.ndarray  # [num_blocks, block_size, Hkv, D]
    value_cache: np.ndarray  # [num_blocks, block_size, Hkv, Dv]


def write_slots(cache: np.ndarray, tokens: np.ndarray, slot_mapping: np.ndarray) -> np.ndarray:
    """Copy of ``cache`` with token t written at flat slot ``slot_mapping[t]``; -1 skips."""
    out = cache.copy()
    block_size = cache.shape[1]
    for t, slot in enumerate(slot_mapping.tolist()):
        if slot < 0:
            continue
        out[slot // block_size, slot % block_size] = tokens[t]
    return out


def read_sequence(cache: np.ndarray, block_row: np.ndarray, length: int) -> np.ndarray:
    """The first ``length`` cached tokens of one sequence, in logical order: [length, H, D]."""
    block_size = cache.shape[1]
    rows = []
    for pos in range(length):
        rows.append(cache[block_row[pos // block_size], pos % block_size])
    return np.stack(rows) if rows else cache[:0, 0]


def attend(q: np.ndarray, k: np.ndarray, v: np.ndarray, offset: int, scale: float, is_causal: bool) -> np.ndarray:
    """Softmax attention of q [Lq, Hq, D] over k [S, Hkv, D], v [S, Hkv, Dv] -> [Lq, Hq, Dv].

    Query i sits at absolute position ``offset + i`` (bottom-right causal alignment,
    as in Attention-24 with ``nonpad_kv_seqlen``). Query head h uses kv head
    ``h // (Hq // Hkv)`` (grouped-query attention).
    """
    lq, hq, _ = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    out = np.zeros((lq, hq, v.shape[2]), dtype=np.float64)
    for i in range(lq):
        visible = k.shape[0] if not is_causal else min(k.shape[0], offset + i + 1)
        if visible <= 0:
            continue  # a fully masked row is 0 (ONNX Attention errata #8068)
        for h in range(hq):
            kv = h // group
            scores = (k[:visible, kv].astype(np.float64) @ q[i, h].astype(np.float64)) * scale
            weights = np.exp(scores - scores.max())
            weights /= weights.sum()
            out[i, h] = weights @ v[:visible, kv].astype(np.float64)
    return out


# --8<-- [start:paged_attention]
def paged_attention(
    query: np.ndarray,
    key: np.ndarray,
    value: np.ndarray,
    key_cache: np.ndarray,
    value_cache: np.ndarray,
    cu_seqlens_q: np.ndarray,
    seq_lens: np.ndarray,
    block_table: np.ndarray,
    slot_mapping: np.ndarray,
    *,
    scale: float | None = None,
    is_causal: bool = True,
) -> PagedResult:
    """One PagedAttention step on packed tokens (see the op draft in README.md).

    1. Token t's key/value go to flat slot ``slot_mapping[t]`` of the pools (-1: not written).
    2. Sequence b's queries are tokens ``cu_seqlens_q[b]:cu_seqlens_q[b+1]``; its keys are
       the first ``seq_lens[b]`` tokens found through ``block_table[b]`` after the writes.
    3. Tokens at or after ``cu_seqlens_q[-1]`` are padding; their output rows are 0.
    """
    _, hkv, d = key_cache.shape[1:]
    dv = value_cache.shape[3]
    tokens = query.shape[0]
    k_pool = write_slots(key_cache, key.reshape(tokens, hkv, d), slot_mapping)
    v_pool = write_slots(value_cache, value.reshape(tokens, hkv, dv), slot_mapping)
    q = query.reshape(tokens, -1, d)
    scale = 1.0 / np.sqrt(d) if scale is None else scale
    y = np.zeros((tokens, q.shape[1], dv), dtype=np.float64)
    for b in range(len(seq_lens)):
        start, end = int(cu_seqlens_q[b]), int(cu_seqlens_q[b + 1])
        length = int(seq_lens[b])
        k = read_sequence(k_pool, block_table[b], length)
        v = read_sequence(v_pool, block_table[b], length)
        y[start:end] = attend(q[start:end], k, v, length - (end - start), scale, is_causal)
    return PagedResult(y.reshape(tokens, -1).astype(query.dtype), k_pool, v_pool)


# --8<-- [end:paged_attention]
