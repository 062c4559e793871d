"""Hypothesis strategies that draw one single-node model of a standard op, its inputs,
its expected outputs (float64 references) and the features it exercises.

Each strategy returns an :class:`Example`; ``features`` name the corners the example
touches (the columns of the support page), ``params`` are the drawn attributes (what
divergence predicates read).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
from hypothesis import strategies as st

from conformance import reference
from generator.onnx_build import builder_model, graph_builder, seeded


@dataclass(frozen=True)
class Example:
    op: str  # e.g. "Attention"
    opset: int
    model: onnx.ModelProto
    inputs: Mapping[str, np.ndarray]
    expected: Mapping[str, np.ndarray]
    features: tuple[str, ...]
    params: Mapping[str, object] = field(default_factory=dict)
    rtol: float = 1e-4
    atol: float = 1e-4

    @property
    def label(self) -> str:
        return f"{self.op}-{self.opset}"


def single_node_model(
    op: str,
    opset: int,
    inputs: Mapping[str, np.ndarray | None],
    outputs: Mapping[str, np.ndarray | None],
    **attrs,
) -> onnx.ModelProto:
    """One node of ``op``; ``None`` values are skipped optional inputs/outputs ("")."""
    b = graph_builder(op.lower(), {"": opset})
    args = [None if a is None else b.input(n, _dtype(a), list(a.shape)) for n, a in inputs.items()]
    while args and args[-1] is None:
        args.pop()
    names = [name if array is not None else "" for name, array in outputs.items()]
    while names and not names[-1]:
        names.pop()
    results = getattr(b.op, op)(*args, _outputs=names, _name=op.lower(), **attrs)
    results = [results] if isinstance(results, ir.Value) else results
    for value, name in zip(results, names, strict=True):
        if not name:
            value.name = ""  # an output the node does not compute
            continue
        value.type, value.shape = ir.TensorType(_dtype(outputs[name])), ir.Shape(outputs[name].shape)
        b.add_output(value, name)
    return builder_model(b)


def _dtype(array: np.ndarray) -> ir.DataType:
    return ir.DataType.from_numpy(array.dtype)


def _randn(rng: np.random.RandomState, shape, dtype=np.float32, scale: float = 1.0) -> np.ndarray:
    return (rng.randn(*shape) * scale).astype(dtype)


# ---------------------------------------------------------------- TensorScatter-24
SCATTER_DTYPES = ("float32", "float16", "int64", "int8", "bool", "int4")


def _values(rng: np.random.RandomState, shape, dtype: str) -> np.ndarray:
    if dtype == "int4":  # a quantized cache (ONNX INT4, two's complement, through ml_dtypes)
        return rng.randint(-8, 8, size=shape).astype(ml_dtypes.int4)
    if dtype == "bool":
        return rng.randint(0, 2, size=shape).astype(bool)
    if dtype.startswith("int"):
        return rng.randint(-100, 100, size=shape).astype(dtype)
    return _randn(rng, shape, dtype)


@st.composite
def tensor_scatter_examples(draw) -> Example:
    ndim = draw(st.integers(2, 5))
    axis = draw(st.integers(1, ndim - 1))
    negative = draw(st.booleans())
    batch, max_seq = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    seq = draw(st.integers(1, max_seq))
    dims = [batch] + [draw(st.integers(1, 3)) for _ in range(ndim - 1)]
    dims[axis] = max_seq
    mode = draw(st.sampled_from(["linear", "circular"]))
    with_indices = draw(st.booleans())
    high = max_seq - seq if mode == "linear" else 3 * max_seq
    indices = np.array([draw(st.integers(0, high)) for _ in range(batch)], np.int64) if with_indices else None
    dtype = draw(st.sampled_from(SCATTER_DTYPES))
    opset = draw(st.sampled_from([24, 25, 28]))
    rng = seeded(draw(st.integers(0, 2**16)))
    past = _values(rng, dims, dtype)
    update_shape = list(dims)
    update_shape[axis] = seq
    update = _values(rng, update_shape, dtype)
    axis_attr = axis - ndim if negative else axis
    expected = reference.tensor_scatter(past, update, indices, axis=axis_attr, mode=mode)
    attrs = {"mode": mode} if mode != "linear" or draw(st.booleans()) else {}
    if axis_attr != -2 or draw(st.booleans()):
        attrs["axis"] = axis_attr
    model = single_node_model(
        "TensorScatter",
        opset,
        {"past_cache": past, "update": update, "write_indices": indices},
        {"present_cache": expected},
        **attrs,
    )
    wraps = indices is not None and mode == "circular" and bool((indices + seq > max_seq).any())
    features = [
        mode,
        f"axis {axis_attr} of rank {ndim}",
        "write_indices" if indices is not None else "no write_indices",
        f"dtype {dtype}",
    ]
    if wraps:
        features.append("circular wrap")
    if mode == "circular" and batch > max_seq:
        features.append("circular, batch > max_seq")
    inputs = {"past_cache": past, "update": update}
    if indices is not None:
        inputs["write_indices"] = indices
    params = {"mode": mode, "axis": axis_attr, "ndim": ndim, "batch": batch, "max_seq": max_seq, "dtype": dtype}
    return Example("TensorScatter", opset, model, inputs, {"present_cache": expected}, tuple(features), params, 0, 0)


# ---------------------------------------------------------------- Attention-23/24/25
@st.composite
def attention_examples(draw) -> Example:
    opset = draw(st.sampled_from([23, 24, 25]))
    batch = draw(st.integers(1, 2))
    kv_heads, group = draw(st.integers(1, 3)), draw(st.sampled_from([1, 1, 2, 3]))
    q_heads = kv_heads * group
    head, v_head = draw(st.sampled_from([2, 4, 8])), draw(st.sampled_from([2, 4, 8]))
    q_len, kv_len = draw(st.integers(1, 5)), draw(st.integers(1, 6))
    three_d = draw(st.booleans())
    cache = draw(st.sampled_from(["none", "past", "nonpad"] if opset >= 24 else ["none", "past"]))
    past_len = draw(st.integers(1, 4)) if cache == "past" else 0
    total = kv_len + past_len
    is_causal = draw(st.integers(0, 1))
    mask_kind = draw(st.sampled_from(["none", "bool", "float"]))
    if opset == 23 and is_causal:
        mask_kind = "none"  # Attention-23: attn_mask and is_causal are exclusive
    softcap = draw(st.sampled_from([0.0, 0.0, 2.0, 5.0]))
    scale = draw(st.sampled_from([None, None, 0.1, 0.5, 1.3]))
    qk_mode = draw(st.sampled_from([None, None, 0, 1, 2, 3]))
    left = right = -1
    if opset == 25:
        left = draw(st.sampled_from([-1, -1, 0, 1, 2, 3]))
        right = draw(st.sampled_from([-1, -1, 0]) if is_causal else st.sampled_from([-1, -1, 0, 1, 2]))
    softmax_precision = draw(st.sampled_from([None, None, 1]))
    rng = seeded(draw(st.integers(0, 2**16)))

    nonpad = None
    if cache == "nonpad":
        nonpad = np.array([draw(st.integers(0, kv_len)) for _ in range(batch)], np.int64)
    mask = None
    if mask_kind != "none":
        shape_kind = draw(st.sampled_from(["2d", "b1", "bh"]))
        lead = {"2d": (), "b1": (batch, 1), "bh": (batch, q_heads)}[shape_kind]
        length = total
        if nonpad is not None and opset >= 24 and draw(st.booleans()):
            length = draw(st.integers(max(1, int(nonpad.max())), total))  # short mask, padded by the op
        if mask_kind == "bool":
            mask = rng.rand(*lead, q_len, length) < 0.7
            if draw(st.booleans()):  # a fully-masked query row
                mask[..., draw(st.integers(0, q_len - 1)), :] = False
        else:
            mask = _randn(rng, (*lead, q_len, length))

    def qkv(heads, seq, dim):
        return _randn(rng, (batch, seq, heads * dim) if three_d else (batch, heads, seq, dim))

    q, k, v = qkv(q_heads, q_len, head), qkv(kv_heads, kv_len, head), qkv(kv_heads, kv_len, v_head)
    past_k = _randn(rng, (batch, kv_heads, past_len, head)) if cache == "past" else None
    past_v = _randn(rng, (batch, kv_heads, past_len, v_head)) if cache == "past" else None
    attrs: dict = {}
    if three_d:
        attrs.update(q_num_heads=q_heads, kv_num_heads=kv_heads)
    if is_causal:
        attrs["is_causal"] = 1
    if scale is not None:
        attrs["scale"] = scale
    if softcap:
        attrs["softcap"] = softcap
    if qk_mode is not None and qk_mode != 0:
        attrs["qk_matmul_output_mode"] = qk_mode
    if left != -1:
        attrs["left_window_size"] = left
    if right != -1:
        attrs["right_window_size"] = right
    if softmax_precision is not None:
        attrs["softmax_precision"] = softmax_precision
    ref_attrs = {k_: v_ for k_, v_ in attrs.items() if k_ != "softmax_precision"}
    result = reference.attention(q, k, v, mask, past_k, past_v, nonpad, **ref_attrs)
    outputs = {
        "Y": result.y,
        "present_key": result.present_key if cache == "past" else None,
        "present_value": result.present_value if cache == "past" else None,
        "qk_matmul_output": result.qk if qk_mode is not None else None,
    }
    inputs_all = {"Q": q, "K": k, "V": v, "attn_mask": mask, "past_key": past_k, "past_value": past_v}
    if opset >= 24:
        inputs_all["nonpad_kv_seqlen"] = nonpad
    model = single_node_model("Attention", opset, inputs_all, outputs, **attrs)
    inputs = {n: a for n, a in inputs_all.items() if a is not None}
    expected = {n: a for n, a in outputs.items() if a is not None}

    pos_ok = result.fully_masked
    features = ["3-D" if three_d else "4-D", "MHA" if group == 1 else f"GQA {group}:1"]
    if is_causal:
        features.append("is_causal, q_len != kv_len" if q_len != total else "is_causal, q_len == kv_len")
    if mask_kind != "none":
        features.append(f"{mask_kind} mask")
    if pos_ok:
        features.append("fully masked row")
    if cache == "past":
        features.append("past/present")
    if cache == "nonpad":
        features.append("nonpad_kv_seqlen")
    if softcap:
        features.append("softcap")
    if scale is not None:
        features.append("scale")
    if qk_mode is not None:
        features.append(f"qk_matmul_output_mode {qk_mode}")
    if left >= 0:
        features.append("left window")
    if right >= 0:
        features.append("right window")
    if head != v_head:
        features.append("v head size != qk head size")
    if softmax_precision is not None:
        features.append("softmax_precision")
    params = {
        "three_d": three_d,
        "cache": cache,
        "is_causal": is_causal,
        "mask": mask_kind,
        "mask_short": mask is not None and mask.shape[-1] < total,
        "softcap": softcap,
        "qk_mode": qk_mode,
        "left": left,
        "right": right,
        "fully_masked": pos_ok,
        "q_len": q_len,
        "kv_len": kv_len,
        "total": total,
        "group": group,
        "v_head_differs": head != v_head,
    }
    return Example("Attention", opset, model, inputs, expected, tuple(features), params)


# ---------------------------------------------------------------- RotaryEmbedding-23
@st.composite
def rotary_examples(draw) -> Example:
    opset = draw(st.sampled_from([23, 28]))
    batch, heads, seq = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 5))
    head = draw(st.sampled_from([2, 4, 6, 8]))
    rot = draw(st.sampled_from([0] + [d for d in range(2, head, 2)]))
    interleaved = draw(st.integers(0, 1))
    three_d = draw(st.booleans())
    with_positions = draw(st.booleans())
    rng = seeded(draw(st.integers(0, 2**16)))
    half = (rot or head) // 2
    x = _randn(rng, (batch, seq, heads * head) if three_d else (batch, heads, seq, head))
    if with_positions:
        max_pos = draw(st.integers(seq, seq + 6))
        positions = rng.randint(0, max_pos, size=(batch, seq)).astype(np.int64)
        angles = rng.rand(max_pos, half) * 6.3
    else:
        positions = None
        angles = rng.rand(batch, seq, half) * 6.3
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    attrs: dict = {}
    if interleaved:
        attrs["interleaved"] = 1
    if rot:
        attrs["rotary_embedding_dim"] = rot
    if three_d:
        attrs["num_heads"] = heads
    expected = reference.rotary_embedding(
        x, cos, sin, positions, interleaved=bool(interleaved), rotary_embedding_dim=rot, num_heads=heads
    )
    inputs_all = {"X": x, "cos_cache": cos, "sin_cache": sin, "position_ids": positions}
    model = single_node_model("RotaryEmbedding", opset, inputs_all, {"Y": expected}, **attrs)
    features = ["3-D, num_heads" if three_d else "4-D", "interleaved" if interleaved else "halves"]
    features.append("rotary_embedding_dim" if rot else "full rotation")
    features.append("position_ids" if with_positions else "per-token caches")
    params = {"three_d": three_d, "interleaved": interleaved, "rot": rot, "positions": with_positions}
    inputs = {n: a for n, a in inputs_all.items() if a is not None}
    return Example("RotaryEmbedding", opset, model, inputs, {"Y": expected}, tuple(features), params)


# ---------------------------------------------------------------- RMSNormalization-23
@st.composite
def rms_examples(draw) -> Example:
    opset = draw(st.sampled_from([23, 28]))
    rank = draw(st.integers(1, 4))
    shape = [draw(st.integers(1, 4)) for _ in range(rank)]
    axis = draw(st.integers(-rank, rank - 1))
    norm_shape = shape[axis % rank :]
    scale_shape = [d if draw(st.booleans()) else 1 for d in norm_shape]  # unidirectional broadcast
    if draw(st.booleans()):
        scale_shape = scale_shape[draw(st.integers(0, len(scale_shape) - 1)) :]
    epsilon = draw(st.sampled_from([None, 1e-5, 1e-2, 0.5]))
    stash = draw(st.sampled_from([None, 1]))
    rng = seeded(draw(st.integers(0, 2**16)))
    x, scale = _randn(rng, shape), _randn(rng, scale_shape)
    attrs: dict = {}
    if axis != -1 or draw(st.booleans()):
        attrs["axis"] = axis
    if epsilon is not None:
        attrs["epsilon"] = epsilon
    if stash is not None:
        attrs["stash_type"] = stash
    expected = reference.rms_normalization(x, scale, axis=axis, epsilon=1e-5 if epsilon is None else epsilon)
    model = single_node_model("RMSNormalization", opset, {"X": x, "scale": scale}, {"Y": expected}, **attrs)
    features = [f"rank {rank}", "axis default" if "axis" not in attrs else ("negative axis" if axis < 0 else "axis")]
    if list(scale_shape) != list(norm_shape):
        features.append("broadcast scale")
    if epsilon is not None:
        features.append("epsilon")
    params = {"rank": rank, "axis": axis, "broadcast": list(scale_shape) != list(norm_shape)}
    return Example("RMSNormalization", opset, model, {"X": x, "scale": scale}, {"Y": expected}, tuple(features), params)


# ---------------------------------------------------------------- SwiGLU-28
@st.composite
def swiglu_examples(draw) -> Example:
    rank = draw(st.integers(1, 4))
    shape = [draw(st.integers(1, 5)) for _ in range(rank)]
    alpha = draw(st.sampled_from([None, 1.0, 1.702, 0.5, 3.0]))
    rng = seeded(draw(st.integers(0, 2**16)))
    a, b = _randn(rng, shape, scale=3.0), _randn(rng, shape)
    attrs = {} if alpha is None else {"alpha": alpha}
    expected = reference.swiglu(a, b, alpha=1.0 if alpha is None else alpha)
    model = single_node_model("SwiGLU", 28, {"A": a, "B": b}, {"Y": expected}, **attrs)
    features = [f"rank {rank}", "alpha default" if alpha is None else "alpha"]
    return Example("SwiGLU", 28, model, {"A": a, "B": b}, {"Y": expected}, tuple(features), {"alpha": alpha})


# ---------------------------------------------------------------- LinearAttention-27
@st.composite
def linear_attention_examples(draw) -> Example:
    rule = draw(st.sampled_from(reference.LINEAR_ATTENTION_RULES))
    batch, seq = draw(st.integers(1, 3)), draw(st.sampled_from([0, 1, 1, 2, 3, 4, 5, 7, 9]))
    kv_heads, group = draw(st.integers(1, 3)), draw(st.sampled_from([1, 1, 2, 3]))
    q_heads = kv_heads * group
    d_k, d_v = draw(st.sampled_from([1, 2, 4, 8])), draw(st.sampled_from([1, 2, 4, 8]))
    decay_width = kv_heads * draw(st.sampled_from([1, d_k])) if rule in ("gated", "gated_delta") else 0
    beta_width = draw(st.sampled_from([kv_heads, 1])) if rule in ("delta", "gated_delta") else 0
    with_past = draw(st.booleans())
    scale = draw(st.sampled_from([None, None, 0.0, 0.3, -1.5]))
    chunk_size = draw(st.sampled_from([None, None, 1, 2, 3, 4, 64]))
    dtype = draw(st.sampled_from(["float32", "float32", "float32", "float16"]))
    rng = seeded(draw(st.integers(0, 2**16)))

    def packed(width: int, scale_by: float = 1.0) -> np.ndarray:
        return _randn(rng, (batch, seq, width), dtype, scale_by)

    inputs_all = {
        "query": packed(q_heads * d_k),
        "key": packed(kv_heads * d_k, 1 / np.sqrt(d_k)),  # about unit norm, as the delta rules ask
        "value": packed(kv_heads * d_v),
        "past_state": _randn(rng, (batch, kv_heads, d_k, d_v), dtype, 0.5) if with_past else None,
        "decay": (-np.abs(packed(decay_width))).astype(dtype) if decay_width else None,
        "beta": rng.rand(batch, seq, beta_width).astype(dtype) if beta_width else None,
    }
    attrs = {"q_num_heads": q_heads, "kv_num_heads": kv_heads}
    if rule != "gated_delta" or draw(st.booleans()):
        attrs["update_rule"] = rule
    if scale is not None:
        attrs["scale"] = scale
    if chunk_size is not None:
        attrs["chunk_size"] = chunk_size
    output, present = reference.linear_attention(**inputs_all, **({"update_rule": "gated_delta"} | attrs))
    expected = {"output": output, "present_state": present}
    model = single_node_model("LinearAttention", 27, inputs_all, expected, **attrs)
    features = [f"rule {rule}", "MHA" if group == 1 else ("MQA" if kv_heads == 1 else f"GQA {group}:1")]
    if decay_width:
        features.append("decay per head" if decay_width == kv_heads else "decay per key dim")
    if beta_width:
        features.append("beta per head" if beta_width == kv_heads else "beta shared (B, T, 1)")
    features.append("past_state" if with_past else "no past_state")
    features.append({0: "T = 0 (no new token)", 1: "T = 1 (decode)"}.get(seq, "T > 1 (prefill)"))
    if chunk_size is not None and seq > 1:
        features.append("chunk_size divides T" if seq % chunk_size == 0 else "chunk_size does not divide T")
    if scale is not None:
        features.append("scale = 0 (default)" if scale == 0.0 else "explicit scale")
    if d_k != d_v:
        features.append("d_v != d_k")
    if batch > 1:
        features.append("batch > 1")
    features.append(f"dtype {dtype}")
    params = {"rule": rule, "seq": seq, "dtype": dtype, "group": group, "d_k": d_k, "d_v": d_v}
    inputs = {n: a for n, a in inputs_all.items() if a is not None}
    tol = 2e-3 if dtype == "float16" else 1e-4
    return Example("LinearAttention", 27, model, inputs, expected, tuple(features), params, tol, tol)


STRATEGIES = {
    "TensorScatter": tensor_scatter_examples,
    "LinearAttention": linear_attention_examples,
    "Attention": attention_examples,
    "RotaryEmbedding": rotary_examples,
    "RMSNormalization": rms_examples,
    "SwiGLU": swiglu_examples,
}
