"""Graph builders for the KV-cache pattern (onnx.helper, opset 24; 25 where windows are used).

Every builder returns a stamped model (:func:`generator.onnx_build.make_model`) whose
graph input and output names follow one convention, shared with onnxruntime-genai:

``past_key``/``past_value`` (B, Hkv, L, D) -> ``present_key``/``present_value`` (same
shape), plus ``write_indices`` (int64 [B]) and ``nonpad_kv_seqlen`` (int64 [B]).
The sequence dimension of the new tokens is symbolic (``seq``), so one graph serves
prefill (``seq = prompt length``) and decode (``seq = 1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from generator.onnx_build import initializer, make_model, tensor_info

FLOAT = np.float32
CACHE_OUTPUTS = ("present_key", "present_value")


def _heads(name: str, heads: int, head_dim: int, batch="batch", seq="seq") -> onnx.ValueInfoProto:
    return tensor_info(name, FLOAT, [batch, heads, seq, head_dim])


def _cache(name: str, kv_heads: int, max_len: int | str, head_dim: int) -> onnx.ValueInfoProto:
    return tensor_info(name, FLOAT, ["batch", kv_heads, max_len, head_dim])


def _per_sample(name: str) -> onnx.ValueInfoProto:
    return tensor_info(name, np.int64, ["batch"])


def _opset(left_window_size: int, right_window_size: int) -> int:
    return 25 if (left_window_size, right_window_size) != (-1, -1) else 24


def _window_attrs(left_window_size: int, right_window_size: int) -> dict[str, int]:
    if (left_window_size, right_window_size) == (-1, -1):
        return {}
    return {"left_window_size": left_window_size, "right_window_size": right_window_size}


# --8<-- [start:cache_step]
def cache_attention_nodes(
    query: str,
    key: str,
    value: str,
    output: str,
    *,
    mode: str = "linear",
    left_window_size: int = -1,
    right_window_size: int = -1,
) -> list[onnx.NodeProto]:
    """2x TensorScatter (write) + Attention (read the whole cache, bottom-right causal).

    Reads graph inputs ``past_key``, ``past_value``, ``write_indices``,
    ``nonpad_kv_seqlen``; writes ``present_key``, ``present_value`` and ``output``.
    """
    scatter = {"mode": mode, "axis": 2}
    return [
        helper.make_node(
            "TensorScatter",
            ["past_key", key, "write_indices"],
            ["present_key"],
            name="scatter_key",
            **scatter,
        ),
        helper.make_node(
            "TensorScatter",
            ["past_value", value, "write_indices"],
            ["present_value"],
            name="scatter_value",
            **scatter,
        ),
        helper.make_node(
            "Attention",
            [query, "present_key", "present_value", "", "", "", "nonpad_kv_seqlen"],
            [output],
            name="attention",
            is_causal=1,
            **_window_attrs(left_window_size, right_window_size),
        ),
    ]


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
    nodes = cache_attention_nodes(
        "q",
        "k",
        "v",
        "y",
        mode=mode,
        left_window_size=left_window_size,
        right_window_size=right_window_size,
    )
    graph = helper.make_graph(
        nodes,
        f"kv_cache_{mode}_step",
        [
            _heads("q", q_heads, head_dim),
            _heads("k", kv_heads, head_dim),
            _heads("v", kv_heads, head_dim),
            _cache("past_key", kv_heads, max_len, head_dim),
            _cache("past_value", kv_heads, max_len, head_dim),
            _per_sample("write_indices"),
            _per_sample("nonpad_kv_seqlen"),
        ],
        [
            _heads("y", q_heads, head_dim),
            _cache("present_key", kv_heads, max_len, head_dim),
            _cache("present_value", kv_heads, max_len, head_dim),
        ],
    )
    return make_model(graph, {"": _opset(left_window_size, right_window_size)})


# --8<-- [end:cache_step]


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
    inputs = ["q", "k", "v"] + (["", "", "", "nonpad_kv_seqlen"] if nonpad else [])
    windows = _window_attrs(left_window_size, right_window_size)
    node = helper.make_node("Attention", inputs, ["y"], is_causal=is_causal, **windows)
    graph = helper.make_graph(
        [node],
        "attention",
        [
            _heads("q", q_heads, head_dim, seq=q_len),
            _heads("k", kv_heads, head_dim, seq=kv_len),
            _heads("v", kv_heads, head_dim, seq=kv_len),
        ]
        + ([_per_sample("nonpad_kv_seqlen")] if nonpad else []),
        [_heads("y", q_heads, head_dim, seq=q_len)],
    )
    return make_model(graph, {"": _opset(left_window_size, right_window_size)})


def tensor_scatter_model(
    past_shape: tuple[int, ...] | list,
    update_shape: tuple[int, ...] | list,
    *,
    axis: int = -2,
    mode: str = "linear",
    dtype=FLOAT,
) -> onnx.ModelProto:
    """A lone TensorScatter-24: ``past_cache, update, write_indices -> present_cache``."""
    node = helper.make_node(
        "TensorScatter",
        ["past_cache", "update", "write_indices"],
        ["present_cache"],
        axis=axis,
        mode=mode,
    )
    graph = helper.make_graph(
        [node],
        f"tensor_scatter_{mode}",
        [
            tensor_info("past_cache", dtype, list(past_shape)),
            tensor_info("update", dtype, list(update_shape)),
            tensor_info("write_indices", np.int64, [past_shape[0]]),
        ],
        [tensor_info("present_cache", dtype, list(past_shape))],
    )
    return make_model(graph, {"": 24})


def concat_cache_model(*, kv_heads: int, head_dim: int) -> onnx.ModelProto:
    """Growing cache: ``present_key = Concat(past_key, k)`` (what Attention-23 does inside)."""
    node = helper.make_node("Concat", ["past_key", "k"], ["present_key"], axis=2)
    graph = helper.make_graph(
        [node],
        "concat_cache",
        [_cache("past_key", kv_heads, "past", head_dim), _heads("k", kv_heads, head_dim)],
        [_cache("present_key", kv_heads, "total", head_dim)],
    )
    return make_model(graph, {"": 24})


def attention23_step_model(*, q_heads: int, kv_heads: int, head_dim: int) -> onnx.ModelProto:
    """Attention-23 with past/present: the cache grows by Concat inside the op."""
    node = helper.make_node(
        "Attention",
        ["q", "k", "v", "", "past_key", "past_value"],
        ["y", "present_key", "present_value"],
        is_causal=1,
    )
    graph = helper.make_graph(
        [node],
        "attention23_past_present",
        [
            _heads("q", q_heads, head_dim),
            _heads("k", kv_heads, head_dim),
            _heads("v", kv_heads, head_dim),
            _cache("past_key", kv_heads, "past", head_dim),
            _cache("past_value", kv_heads, "past", head_dim),
        ],
        [
            _heads("y", q_heads, head_dim),
            _cache("present_key", kv_heads, "total", head_dim),
            _cache("present_value", kv_heads, "total", head_dim),
        ],
    )
    return make_model(graph, {"": 23})


# --8<-- [start:decoder_layer]
@dataclass(frozen=True)
class DecoderLayerWeights:
    """Projection weights of one attention block (``x @ w`` convention) and RoPE tables."""

    q_proj: np.ndarray  # (hidden, q_heads * head_dim)
    k_proj: np.ndarray  # (hidden, kv_heads * head_dim)
    v_proj: np.ndarray  # (hidden, kv_heads * head_dim)
    o_proj: np.ndarray  # (q_heads * head_dim, hidden)
    cos_cache: np.ndarray  # (max_positions, head_dim / 2)
    sin_cache: np.ndarray  # (max_positions, head_dim / 2)


def decoder_layer_model(
    weights: DecoderLayerWeights,
    *,
    q_heads: int,
    kv_heads: int,
    max_len: int,
) -> onnx.ModelProto:
    """The attention block of a decoder layer with an external static KV cache.

    I/O contract (B = batch, S = new tokens, symbolic; L = ``max_len`` cache slots):

    - inputs: ``hidden_states`` f32 (B, S, hidden); ``position_ids`` i64 (B, S), the
      absolute positions of the new tokens; ``past_key``/``past_value`` f32
      (B, kv_heads, L, head_dim); ``write_indices`` i64 (B) where sample b writes;
      ``nonpad_kv_seqlen`` i64 (B), valid tokens after the write.
    - outputs: ``output`` f32 (B, S, hidden); ``present_key``/``present_value``, the
      caches after the write (same shape as the pasts, aliasable with them).

    Dataflow: MatMul projections -> reshape to heads -> RotaryEmbedding-23 on Q and K
    (before the scatter: the cache stores rotated keys) -> :func:`cache_attention_nodes`
    (TensorScatter x2 + Attention-24 GQA) -> merge heads -> output projection. Node
    names are stable (``q_proj``, ``rope_k``, ``scatter_key``, ``attention``, ...) so that
    rewrites (the paged-attention form) can find them.
    """
    hidden = weights.q_proj.shape[0]
    head_dim = weights.q_proj.shape[1] // q_heads
    nodes: list[onnx.NodeProto] = []
    for name in ("q", "k", "v"):
        nodes += [
            helper.make_node(
                "MatMul",
                ["hidden_states", f"{name}_proj.weight"],
                [f"{name}_flat"],
                name=f"{name}_proj",
            ),
            helper.make_node(
                "Reshape",
                [f"{name}_flat", f"{name}_heads_shape"],
                [f"{name}_bshd"],
                name=f"{name}_split_heads",
            ),
            helper.make_node(
                "Transpose",
                [f"{name}_bshd"],
                [f"{name}_bhsd"],
                name=f"{name}_to_bhsd",
                perm=[0, 2, 1, 3],
            ),
        ]
    for name in ("q", "k"):
        nodes.append(
            helper.make_node(
                "RotaryEmbedding",
                [f"{name}_bhsd", "cos_cache", "sin_cache", "position_ids"],
                [f"{name}_rope"],
                name=f"rope_{name}",
            )
        )
    nodes += cache_attention_nodes("q_rope", "k_rope", "v_bhsd", "attn_bhsd")
    nodes += [
        helper.make_node("Transpose", ["attn_bhsd"], ["attn_bshd"], name="attn_to_bshd", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["attn_bshd", "merge_heads_shape"], ["attn_flat"], name="merge_heads"),
        helper.make_node("MatMul", ["attn_flat", "o_proj.weight"], ["output"], name="o_proj"),
    ]
    inits = [
        initializer("q_proj.weight", weights.q_proj),
        initializer("k_proj.weight", weights.k_proj),
        initializer("v_proj.weight", weights.v_proj),
        initializer("o_proj.weight", weights.o_proj),
        initializer("cos_cache", weights.cos_cache),
        initializer("sin_cache", weights.sin_cache),
        initializer("q_heads_shape", np.array([0, 0, q_heads, head_dim], np.int64)),
        initializer("k_heads_shape", np.array([0, 0, kv_heads, head_dim], np.int64)),
        initializer("v_heads_shape", np.array([0, 0, kv_heads, head_dim], np.int64)),
        initializer("merge_heads_shape", np.array([0, 0, q_heads * head_dim], np.int64)),
    ]
    graph = helper.make_graph(
        nodes,
        "decoder_attention_block",
        [
            tensor_info("hidden_states", FLOAT, ["batch", "seq", hidden]),
            tensor_info("position_ids", np.int64, ["batch", "seq"]),
            _cache("past_key", kv_heads, max_len, head_dim),
            _cache("past_value", kv_heads, max_len, head_dim),
            _per_sample("write_indices"),
            _per_sample("nonpad_kv_seqlen"),
        ],
        [
            tensor_info("output", FLOAT, ["batch", "seq", hidden]),
            _cache("present_key", kv_heads, max_len, head_dim),
            _cache("present_value", kv_heads, max_len, head_dim),
        ],
        initializer=inits,
    )
    return make_model(graph, {"": 24})


# --8<-- [end:decoder_layer]


def random_decoder_weights(
    rng: np.random.RandomState,
    *,
    hidden: int,
    q_heads: int,
    kv_heads: int,
    head_dim: int,
    max_positions: int,
) -> DecoderLayerWeights:
    """Small random projections (std 1/sqrt(fan_in)) and standard RoPE tables."""
    from proposals.kv_cache.reference import rope_caches

    def proj(n_in: int, n_out: int) -> np.ndarray:
        return (rng.randn(n_in, n_out) / np.sqrt(n_in)).astype(FLOAT)

    cos, sin = rope_caches(max_positions, head_dim)
    return DecoderLayerWeights(
        q_proj=proj(hidden, q_heads * head_dim),
        k_proj=proj(hidden, kv_heads * head_dim),
        v_proj=proj(hidden, kv_heads * head_dim),
        o_proj=proj(q_heads * head_dim, hidden),
        cos_cache=cos,
        sin_cache=sin,
    )
