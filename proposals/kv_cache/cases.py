"""Zoo cases of the KV-cache proposal: TensorScatter-24 + Attention-24/25 over a static cache.

Every expected output comes from :mod:`proposals.kv_cache.reference` (numpy, written
from the spec text). Cases with several data sets are sequences: each set's
``past_*`` inputs are the previous set's ``present_*`` outputs.
"""

from __future__ import annotations

import numpy as np

from generator.onnx_build import seeded
from generator.registry import Case, DataSet, case
from proposals.kv_cache import build, reference

ATOL = 1e-5
RTOL = 1e-5


def _randn(rng: np.random.RandomState, *shape: int) -> np.ndarray:
    return rng.randn(*shape).astype(np.float32)


def _qkv(rng, batch: int, q_heads: int, kv_heads: int, seq: int, head_dim: int):
    return (
        _randn(rng, batch, q_heads, seq, head_dim),
        _randn(rng, batch, kv_heads, seq, head_dim),
        _randn(rng, batch, kv_heads, seq, head_dim),
    )


def _step_dataset(q, k, v, past_key, past_value, step: reference.Step) -> DataSet:
    """Inputs and expected outputs of :func:`build.cache_step_model` for one step."""
    return DataSet(
        inputs={
            "q": q,
            "k": k,
            "v": v,
            "past_key": past_key,
            "past_value": past_value,
            "write_indices": step.write_indices,
            "nonpad_kv_seqlen": step.nonpad_kv_seqlen,
        },
        outputs={"y": step.y, "present_key": step.present_key, "present_value": step.present_value},
    )


def _linear_sequence(rng, chunks: list[int], *, batch=1, q_heads=2, kv_heads=2, max_len=8, head_dim=4) -> list[DataSet]:
    """Prefill/decode chunks of the given sizes through one linear buffer."""
    empty = np.zeros((batch, kv_heads, max_len, head_dim), np.float32)
    tokens = [_qkv(rng, batch, q_heads, kv_heads, seq, head_dim) for seq in chunks]
    steps = reference.run_linear(tokens, empty, empty)
    # Each step's past caches are the previous step's present ones.
    pasts = [(empty, empty)] + [(step.present_key, step.present_value) for step in steps[:-1]]
    return [_step_dataset(*qkv, *past, step) for qkv, past, step in zip(tokens, pasts, steps, strict=True)]


@case
def linear_prefill() -> Case:
    """Linear buffer, prefill: 3 prompt tokens written at slot 0 of an empty 8-slot cache."""
    model = build.cache_step_model(q_heads=2, kv_heads=2, max_len=8, head_dim=4)
    datasets = _linear_sequence(seeded(0), [3])
    return Case(model, datasets, rtol=RTOL, atol=ATOL)


@case
def linear_decode_gqa_ragged() -> Case:
    """Linear buffer, one decode token for a ragged batch (5 and 2 cached tokens), GQA 4:2."""
    rng = seeded(1)
    batch, q_heads, kv_heads, max_len, head_dim = 2, 4, 2, 8, 4
    model = build.cache_step_model(q_heads=q_heads, kv_heads=kv_heads, max_len=max_len, head_dim=head_dim)
    lengths = np.array([5, 2], np.int64)
    # Slots past each sample's length hold garbage: nonpad_kv_seqlen must hide it.
    past_key = _randn(rng, batch, kv_heads, max_len, head_dim)
    past_value = _randn(rng, batch, kv_heads, max_len, head_dim)
    q, k, v = _qkv(rng, batch, q_heads, kv_heads, 1, head_dim)
    step = reference.linear_step(past_key, past_value, lengths, q, k, v)
    return Case(model, [_step_dataset(q, k, v, past_key, past_value, step)], rtol=RTOL, atol=ATOL)


@case
def linear_prefill_then_decode() -> Case:
    """One graph, two steps: prefill 3 tokens (set 0), decode 1 on its present cache (set 1)."""
    model = build.cache_step_model(q_heads=4, kv_heads=2, max_len=8, head_dim=4)
    datasets = _linear_sequence(seeded(2), [3, 1], batch=2, q_heads=4, kv_heads=2)
    return Case(model, datasets, rtol=RTOL, atol=ATOL)


@case
def linear_chunked_prefill() -> Case:
    """Linear buffer, chunked prefill: 3 tokens, then 2 more (offset-aware causal mask), then 1."""
    model = build.cache_step_model(q_heads=2, kv_heads=1, max_len=8, head_dim=4)
    datasets = _linear_sequence(seeded(3), [3, 2, 1], q_heads=2, kv_heads=1)
    return Case(model, datasets, rtol=RTOL, atol=ATOL)


def _circular_sequence(rng, *, seen: int, steps: int, slots=4, q_heads=2, kv_heads=1, head_dim=4):
    """``steps`` single-token decode steps on a circular buffer that has seen ``seen`` tokens."""
    past_key = _randn(rng, 1, kv_heads, slots, head_dim)  # earlier tokens, in ring order
    past_value = _randn(rng, 1, kv_heads, slots, head_dim)
    datasets, tokens = [], []
    for t in range(seen, seen + steps):
        q, k, v = _qkv(rng, 1, q_heads, kv_heads, 1, head_dim)
        step = reference.circular_step(past_key, past_value, np.array([t]), q, k, v)
        datasets.append(_step_dataset(q, k, v, past_key, past_value, step))
        tokens.append((q, k, v))
        past_key, past_value = step.present_key, step.present_value
    return datasets, tokens


@case
def circular_decode_wrap() -> Case:
    """Circular buffer of 4 slots, decode at t=2, 3 (filling) and t=4, 5 (wrapped to slots 0, 1)."""
    model = build.cache_step_model(q_heads=2, kv_heads=1, max_len=4, head_dim=4, mode="circular")
    datasets, _ = _circular_sequence(seeded(4), seen=2, steps=4)
    return Case(model, datasets, rtol=RTOL, atol=ATOL)


@case
def windowed_attention25_equals_circular() -> Case:
    """Attention-25 left_window_size=3 on a full cache; expected Y from a 4-slot circular buffer."""
    rng = seeded(5)
    slots, max_len, q_heads, kv_heads, head_dim = 4, 8, 2, 1, 4
    model = build.cache_step_model(
        q_heads=q_heads,
        kv_heads=kv_heads,
        max_len=max_len,
        head_dim=head_dim,
        left_window_size=slots - 1,
        right_window_size=0,
    )
    tokens = [_qkv(rng, 1, q_heads, kv_heads, 1, head_dim) for _ in range(max_len)]
    ring = np.zeros((1, kv_heads, slots, head_dim), np.float32)
    circular = reference.run_circular(tokens, ring, ring)
    # The full (linear) cache only supplies the present_* expectations; Y comes from the ring.
    full = np.zeros((1, kv_heads, max_len, head_dim), np.float32)
    past_key = past_value = full
    datasets = []
    for t, ((q, k, v), ring_step) in enumerate(zip(tokens, circular, strict=True)):
        write = np.array([t], np.int64)
        key = reference.tensor_scatter(past_key, k, write)
        value = reference.tensor_scatter(past_value, v, write)
        step = reference.Step(write, write + 1, ring_step.y, key, value)
        datasets.append(_step_dataset(q, k, v, past_key, past_value, step))
        past_key, past_value = key, value
    return Case(model, datasets, rtol=RTOL, atol=ATOL)


@case
def tensor_scatter_circular_batch_wrap() -> Case:
    """TensorScatter circular, B=3, L=2: only the sequence index wraps, never the batch index."""
    model = build.tensor_scatter_model((3, 2), (3, 1), axis=1, mode="circular")
    inputs = {
        "past_cache": np.zeros((3, 2), np.float32),
        "update": np.array([[1], [2], [3]], np.float32),
        "write_indices": np.array([0, 2, 4], np.int64),
    }
    present = reference.tensor_scatter(*inputs.values(), axis=1, mode="circular")
    return Case(model, [DataSet(inputs, {"present_cache": present})], rtol=0, atol=0)


@case
def attention_causal_without_nonpad_is_top_left() -> Case:
    """Pitfall: is_causal=1, 1 query, 8 keys, no nonpad_kv_seqlen: top-left, sees k0 only."""
    rng = seeded(6)
    model = build.attention_model(q_heads=2, kv_heads=2, q_len=1, kv_len=8, head_dim=4, nonpad=False)
    q, k, v = _randn(rng, 1, 2, 1, 4), _randn(rng, 1, 2, 8, 4), _randn(rng, 1, 2, 8, 4)
    y = reference.attention(q, k, v, is_causal=True)
    return Case(model, [DataSet({"q": q, "k": k, "v": v}, {"y": y})], rtol=RTOL, atol=ATOL)


@case
def attention25_window_external_cache() -> Case:
    """Attention-25 alone: 2 decode queries, left_window_size=2 over a ragged external cache."""
    rng = seeded(8)
    model = build.attention_model(
        q_heads=4, kv_heads=2, q_len=1, kv_len=8, head_dim=4, nonpad=True, left_window_size=2, right_window_size=0
    )
    q, k, v = _randn(rng, 2, 4, 1, 4), _randn(rng, 2, 2, 8, 4), _randn(rng, 2, 2, 8, 4)
    nonpad = np.array([6, 3], np.int64)
    y = reference.attention(q, k, v, nonpad_kv_seqlen=nonpad, is_causal=True, left_window_size=2, right_window_size=0)
    inputs = {"q": q, "k": k, "v": v, "nonpad_kv_seqlen": nonpad}
    return Case(
        model,
        [DataSet(inputs, {"y": y})],
        rtol=RTOL,
        atol=ATOL,
        divergences={
            "openvino": "OpenVINO 2026.4.1 imports Attention-25 but ignores left_window_size: "
            "its Y equals the unwindowed result (see the kv_cache page, Backend support)"
        },
    )


@case
def decoder_layer_rope_scatter_attention() -> Case:
    """Decoder attention block: projections, RoPE on Q/K, TensorScatter, Attention-24 GQA."""
    rng = seeded(7)
    batch, hidden, q_heads, kv_heads, head_dim, max_len = 2, 16, 4, 2, 4, 8
    weights = build.random_attention_weights(rng, hidden=hidden, q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim)
    cos, sin = reference.rope_caches(max_len, head_dim)
    model = build.decoder_layer_model(weights, cos, sin, q_heads=q_heads, kv_heads=kv_heads, max_len=max_len)
    chunks = [_randn(rng, batch, seq, hidden) for seq in (3, 1)]  # prefill 3 tokens, decode 1
    steps = reference.decoder_layer_steps(
        weights, cos, sin, chunks, q_heads=q_heads, kv_heads=kv_heads, max_len=max_len
    )
    datasets, past = [], np.zeros((batch, kv_heads, max_len, head_dim), np.float32)
    past_key = past_value = past
    for hidden_states, positions, step in steps:
        inputs = {
            "hidden_states": hidden_states,
            "position_ids": positions,
            "past_key": past_key,
            "past_value": past_value,
        }
        inputs |= {"write_indices": step.write_indices, "nonpad_kv_seqlen": step.nonpad_kv_seqlen}
        outputs = {"output": step.y, "present_key": step.present_key, "present_value": step.present_value}
        datasets.append(DataSet(inputs, outputs))
        past_key, past_value = step.present_key, step.present_value
    return Case(model, datasets, rtol=RTOL, atol=ATOL)
