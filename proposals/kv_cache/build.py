"""Graph builders for the KV-cache pattern (onnxscript GraphBuilder, opset 24; 25 where windows are used).

Every builder returns a stamped model (:func:`generator.onnx_build.builder_model`) whose
graph input and output names follow one convention, shared with onnxruntime-genai:

``past_key``/``past_value`` (B, Hkv, L, D) -> ``present_key``/``present_value`` (same
shape), plus ``write_indices`` (int64 [B]) and ``nonpad_kv_seqlen`` (int64 [B]).
The sequence dimension of the new tokens is symbolic (``seq``), so one graph serves
prefill (``seq = prompt length``) and decode (``seq = 1``).

:func:`attention_block` is the one decoder-layer attention builder of the project: the
zoo's decoder layer, the paged-attention cases and the text pipeline's decoders all call
it. This module imports none of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript import GraphBuilder, OpBuilder

from generator.onnx_build import builder_model, graph_builder

FLOAT, INT64 = ir.DataType.FLOAT, ir.DataType.INT64
CACHE_OUTPUTS = ("present_key", "present_value")
BHSD = [0, 2, 1, 3]  # (B, S, H, D) <-> (B, H, S, D)


def _heads(b: GraphBuilder, name: str, heads: int, head_dim: int, seq: int | str = "seq") -> ir.Value:
    return b.input(name, FLOAT, ["batch", heads, seq, head_dim])


def _opset(left_window_size: int, right_window_size: int) -> int:
    return 25 if (left_window_size, right_window_size) != (-1, -1) else 24


def _window_attrs(left_window_size: int, right_window_size: int) -> dict[str, int]:
    if (left_window_size, right_window_size) == (-1, -1):
        return {}
    return {"left_window_size": left_window_size, "right_window_size": right_window_size}


@dataclass(frozen=True)
class CacheInputs:
    """The values one layer's cache step reads: its two buffers, where to write, how much is valid."""

    past_key: ir.Value  # (B, Hkv, L, D)
    past_value: ir.Value
    write_indices: ir.Value  # int64 [B]: slot of each sample's first new token
    nonpad_kv_seqlen: ir.Value  # int64 [B]: valid tokens after the write


def cache_inputs(b: GraphBuilder, kv_heads: int, max_len: int | str, head_dim: int, suffix: str = "") -> CacheInputs:
    """Declare one layer's cache inputs (``past_key{suffix}``, ...) and the two per-sample ones."""
    cache = ["batch", kv_heads, max_len, head_dim]
    return CacheInputs(
        b.input(f"past_key{suffix}", FLOAT, cache),
        b.input(f"past_value{suffix}", FLOAT, cache),
        b.input("write_indices", INT64, ["batch"]),
        b.input("nonpad_kv_seqlen", INT64, ["batch"]),
    )


# --8<-- [start:cache_step]
def cache_attention(
    op: OpBuilder,
    query: ir.Value,
    key: ir.Value,
    value: ir.Value,
    cache: CacheInputs,
    *,
    mode: str = "linear",
    left_window_size: int = -1,
    right_window_size: int = -1,
    scale: float | None = None,
    softcap: float | None = None,
) -> tuple[ir.Value, ir.Value, ir.Value]:
    """2x TensorScatter (write) + Attention (read the whole cache, bottom-right causal).

    ``softcap`` caps the scaled scores as ``softcap * tanh(s / softcap)`` before the mask
    (Attention-24's attribute; Gemma 2's attention logit softcapping).
    Returns ``(y, present_key, present_value)``.
    """
    present_key = op.TensorScatter(cache.past_key, key, cache.write_indices, axis=2, mode=mode)
    present_value = op.TensorScatter(cache.past_value, value, cache.write_indices, axis=2, mode=mode)
    attrs = _window_attrs(left_window_size, right_window_size) | ({} if scale is None else {"scale": scale})
    attrs |= {} if softcap is None else {"softcap": softcap}
    y = op.Attention(query, present_key, present_value, None, None, None, cache.nonpad_kv_seqlen, is_causal=1, **attrs)
    return y, present_key, present_value


def cache_step_model(
    *,
    q_heads: int,
    kv_heads: int,
    max_len: int,
    head_dim: int,
    mode: str = "linear",
    left_window_size: int = -1,
    right_window_size: int = -1,
) -> onnx.ModelProto:
    """One attention step over a static cache: ``q, k, v`` (B, H, seq, D) -> ``y``.

    ``mode="linear"`` is the linear buffer (one graph for prefill and decode),
    ``mode="circular"`` the circular buffer, and a window turns the read into
    Attention-25 (opset 25).
    """
    b = graph_builder(f"kv_cache_{mode}_step", {"": _opset(left_window_size, right_window_size)})
    q = _heads(b, "q", q_heads, head_dim)
    k = _heads(b, "k", kv_heads, head_dim)
    v = _heads(b, "v", kv_heads, head_dim)
    cache = cache_inputs(b, kv_heads, max_len, head_dim)
    y, present_key, present_value = cache_attention(
        b.op, q, k, v, cache, mode=mode, left_window_size=left_window_size, right_window_size=right_window_size
    )
    for out, name in ((y, "y"), (present_key, "present_key"), (present_value, "present_value")):
        b.add_output(out, name)
    return builder_model(b)


# --8<-- [end:cache_step]


def second_reader_model(*, q_heads: int, kv_heads: int, max_len: int, head_dim: int) -> onnx.ModelProto:
    """The cache step plus a second reader of ``past_key`` after the write: ``key_delta =
    present_key - past_key``, the rows this step wrote. Correct as a function; bound in place
    it reads the written buffer and gives zeros (the in-place rule's counterexample)."""
    b = graph_builder("kv_cache_second_reader", {"": 24})
    q = _heads(b, "q", q_heads, head_dim)
    k = _heads(b, "k", kv_heads, head_dim)
    v = _heads(b, "v", kv_heads, head_dim)
    cache = cache_inputs(b, kv_heads, max_len, head_dim)
    y, present_key, present_value = cache_attention(b.op, q, k, v, cache)
    delta = b.op.Sub(present_key, cache.past_key)
    for out, name in ((y, "y"), (present_key, "present_key"), (present_value, "present_value"), (delta, "key_delta")):
        b.add_output(out, name)
    return builder_model(b)


def attention_model(
    *,
    q_heads: int,
    kv_heads: int,
    q_len: int | str,
    kv_len: int | str,
    head_dim: int,
    nonpad: bool,
    is_causal: int = 1,
    left_window_size: int = -1,
    right_window_size: int = -1,
) -> onnx.ModelProto:
    """A lone Attention node over given K/V, with or without ``nonpad_kv_seqlen``.

    Opset 24, or 25 when a window is set.
    """
    b = graph_builder("attention", {"": _opset(left_window_size, right_window_size)})
    q = _heads(b, "q", q_heads, head_dim, seq=q_len)
    k = _heads(b, "k", kv_heads, head_dim, seq=kv_len)
    v = _heads(b, "v", kv_heads, head_dim, seq=kv_len)
    lengths = [b.input("nonpad_kv_seqlen", INT64, ["batch"])] if nonpad else []
    windows = _window_attrs(left_window_size, right_window_size)
    extra = [None, None, None, *lengths] if nonpad else []
    b.add_output(b.op.Attention(q, k, v, *extra, is_causal=is_causal, **windows), "y")
    return builder_model(b)


def tensor_scatter_model(
    past_shape: tuple[int, ...] | list,
    update_shape: tuple[int, ...] | list,
    *,
    axis: int = -2,
    mode: str = "linear",
    dtype: ir.DataType = FLOAT,
) -> onnx.ModelProto:
    """A lone TensorScatter-24: ``past_cache, update, write_indices -> present_cache``."""
    b = graph_builder(f"tensor_scatter_{mode}", {"": 24})
    past = b.input("past_cache", dtype, list(past_shape))
    update = b.input("update", dtype, list(update_shape))
    write = b.input("write_indices", INT64, [past_shape[0]])
    b.add_output(b.op.TensorScatter(past, update, write, axis=axis, mode=mode), "present_cache")
    return builder_model(b)


def concat_cache_model(*, kv_heads: int, head_dim: int) -> onnx.ModelProto:
    """Growing cache: ``present_key = Concat(past_key, k)`` (what Attention-23 does inside)."""
    b = graph_builder("concat_cache", {"": 24})
    past = b.input("past_key", FLOAT, ["batch", kv_heads, "past", head_dim])
    k = _heads(b, "k", kv_heads, head_dim)
    b.add_output(b.op.Concat(past, k, axis=2), "present_key")
    return builder_model(b)


def attention23_step_model(*, q_heads: int, kv_heads: int, head_dim: int) -> onnx.ModelProto:
    """Attention-23 with past/present: the cache grows by Concat inside the op."""
    b = graph_builder("attention23_past_present", {"": 23})
    q, k, v = (_heads(b, n, h, head_dim) for n, h in (("q", q_heads), ("k", kv_heads), ("v", kv_heads)))
    past_key = b.input("past_key", FLOAT, ["batch", kv_heads, "past", head_dim])
    past_value = b.input("past_value", FLOAT, ["batch", kv_heads, "past", head_dim])
    outputs = b.op.Attention(q, k, v, None, past_key, past_value, is_causal=1, _outputs=3)
    for out, name in zip(outputs, ("y", "present_key", "present_value"), strict=True):
        b.add_output(out, name)
    return builder_model(b)


@dataclass(frozen=True)
class AttentionWeights:
    """One attention block's weights (``x @ w`` convention); optional parts are None.

    Qwen2 biases its q/k/v projections; Qwen3 RMS-normalises each query and key head
    (``q_norm``/``k_norm``, weights of length head_dim) before RoPE; OLMo-2 normalises the
    whole projection at once (weights of length heads * head_dim). Qwen3.5 and Qwen3-Next
    gate the merged heads before ``o_proj`` with ``Sigmoid(x @ output_gate)``.
    """

    q_proj: np.ndarray  # (hidden, q_heads * head_dim)
    k_proj: np.ndarray  # (hidden, kv_heads * head_dim)
    v_proj: np.ndarray  # (hidden, kv_heads * head_dim)
    o_proj: np.ndarray  # (q_heads * head_dim, hidden)
    q_bias: np.ndarray | None = None
    k_bias: np.ndarray | None = None
    v_bias: np.ndarray | None = None
    o_bias: np.ndarray | None = None
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None
    norm_epsilon: float = 1e-6
    scale: float | None = None  # None: Attention's default 1/sqrt(head_dim)
    softcap: float | None = None  # None: no score capping (Gemma 2 caps at attn_logit_softcapping)
    output_gate: np.ndarray | None = None  # (hidden, q_heads * head_dim): y * Sigmoid(x @ gate) before o_proj
    output_gate_bias: np.ndarray | None = None


@dataclass(frozen=True)
class Rope:
    """RotaryEmbedding-23 inputs shared by every layer: tables (max_positions, D/2), positions (B, S)."""

    cos_cache: ir.Value
    sin_cache: ir.Value
    position_ids: ir.Value
    rotary_dim: int = 0  # partial rotation: only the first rotary_dim features of a head (0: all)


def _linear(op: OpBuilder, x: ir.Value, weight: np.ndarray, bias: np.ndarray | None, name: str) -> ir.Value:
    y = op.MatMul(x, op.initializer(ir.tensor(weight), f"{name}.weight"))
    return y if bias is None else op.Add(y, op.initializer(ir.tensor(bias), f"{name}.bias"))


def _split_heads(
    op: OpBuilder, x: ir.Value, heads: int, head_dim: int, norm: np.ndarray | None, eps: float, name: str
) -> ir.Value:
    """(B, S, n*D) -> (B, n, S, D), with a per-head RMSNorm before the transpose when given
    (a norm of length n*D normalises the whole projection before the reshape instead)."""
    if norm is not None and norm.shape[0] != head_dim:  # OLMo-2: one norm over all heads
        x = op.RMSNormalization(x, op.initializer(ir.tensor(norm), f"{name}.weight"), axis=-1, epsilon=eps)
        norm = None
    y = op.Reshape(x, [0, 0, heads, head_dim])
    if norm is not None:
        y = op.RMSNormalization(y, op.initializer(ir.tensor(norm), f"{name}.weight"), axis=-1, epsilon=eps)
    return op.Transpose(y, perm=BHSD)


# --8<-- [start:attention_block]
def attention_block(
    op: OpBuilder,
    x: ir.Value,
    weights: AttentionWeights,
    rope: Rope | None,
    cache: CacheInputs,
    *,
    q_heads: int,
    kv_heads: int,
    mode: str = "linear",
) -> tuple[ir.Value, ir.Value, ir.Value]:
    """The attention block of a decoder layer over an external static KV cache.

    MatMul projections -> Reshape/Transpose to heads -> RotaryEmbedding on Q and K (before
    the scatter: the cache stores rotated keys) -> :func:`cache_attention` (TensorScatter x2
    + Attention-24 GQA) -> Transpose/Reshape to merge heads -> (the sigmoid output gate,
    where the weights have one) -> output MatMul.
    ``x`` is (B, S, hidden); returns ``(output, present_key, present_value)``.
    ``rope=None`` is a layer without position encoding (SmolLM3's NoPE layers).
    """
    head_dim = weights.q_proj.shape[1] // q_heads
    eps = weights.norm_epsilon
    q = _linear(op, x, weights.q_proj, weights.q_bias, "q_proj")
    k = _linear(op, x, weights.k_proj, weights.k_bias, "k_proj")
    v = _linear(op, x, weights.v_proj, weights.v_bias, "v_proj")
    q = _split_heads(op, q, q_heads, head_dim, weights.q_norm, eps, "q_norm")
    k = _split_heads(op, k, kv_heads, head_dim, weights.k_norm, eps, "k_norm")
    v = _split_heads(op, v, kv_heads, head_dim, None, eps, "v")
    if rope is not None:
        partial = {"rotary_embedding_dim": rope.rotary_dim} if rope.rotary_dim else {}
        q = op.RotaryEmbedding(q, rope.cos_cache, rope.sin_cache, rope.position_ids, **partial)
        k = op.RotaryEmbedding(k, rope.cos_cache, rope.sin_cache, rope.position_ids, **partial)
    y, present_key, present_value = cache_attention(
        op, q, k, v, cache, mode=mode, scale=weights.scale, softcap=weights.softcap
    )
    y = op.Reshape(op.Transpose(y, perm=BHSD), [0, 0, q_heads * head_dim])
    if weights.output_gate is not None:
        y = op.Mul(y, op.Sigmoid(_linear(op, x, weights.output_gate, weights.output_gate_bias, "gate_proj")))
    return _linear(op, y, weights.o_proj, weights.o_bias, "o_proj"), present_key, present_value


# --8<-- [end:attention_block]


def decoder_layer_model(
    weights: AttentionWeights,
    cos_cache: np.ndarray,
    sin_cache: np.ndarray,
    *,
    q_heads: int,
    kv_heads: int,
    max_len: int,
) -> onnx.ModelProto:
    """:func:`attention_block` alone, as a model.

    I/O contract (B = batch, S = new tokens, symbolic; L = ``max_len`` cache slots):

    - inputs: ``hidden_states`` f32 (B, S, hidden); ``position_ids`` i64 (B, S), the
      absolute positions of the new tokens; ``past_key``/``past_value`` f32
      (B, kv_heads, L, head_dim); ``write_indices`` i64 (B) where sample b writes;
      ``nonpad_kv_seqlen`` i64 (B), valid tokens after the write.
    - outputs: ``output`` f32 (B, S, hidden); ``present_key``/``present_value``, the
      caches after the write (same shape as the pasts, aliasable with them).
    """
    hidden = weights.q_proj.shape[0]
    head_dim = weights.q_proj.shape[1] // q_heads
    b = graph_builder("decoder_attention_block", {"": 24})
    x = b.input("hidden_states", FLOAT, ["batch", "seq", hidden])
    positions = b.input("position_ids", INT64, ["batch", "seq"])
    cache = cache_inputs(b, kv_heads, max_len, head_dim)
    rope = Rope(
        b.initializer(ir.tensor(cos_cache), "cos_cache"), b.initializer(ir.tensor(sin_cache), "sin_cache"), positions
    )
    outputs = attention_block(b.op, x, weights, rope, cache, q_heads=q_heads, kv_heads=kv_heads)
    for out, name in zip(outputs, ("output", *CACHE_OUTPUTS), strict=True):
        b.add_output(out, name)
    return builder_model(b)


def random_attention_weights(
    rng: np.random.RandomState, *, hidden: int, q_heads: int, kv_heads: int, head_dim: int
) -> AttentionWeights:
    """Small random projections (std 1/sqrt(fan_in)), drawn with the project RNG."""

    def proj(n_in: int, n_out: int) -> np.ndarray:
        return (rng.randn(n_in, n_out) / np.sqrt(n_in)).astype(np.float32)

    return AttentionWeights(
        q_proj=proj(hidden, q_heads * head_dim),
        k_proj=proj(hidden, kv_heads * head_dim),
        v_proj=proj(hidden, kv_heads * head_dim),
        o_proj=proj(q_heads * head_dim, hidden),
    )
