"""Standard-op builders of a quantized KV cache (onnxscript GraphBuilder, named dtypes, opset 24/25).

One decode/prefill step over a static cache of codes, in the kv_cache proposal's I/O
convention (``past_*`` -> ``present_*``, ``write_indices``, ``nonpad_kv_seqlen``)::

    k ─QuantizeLinear─► codes ─TensorScatter(axis=2)─► present_key ─DequantizeLinear─► Attention
    (dynamic scales: ReduceMax|k|/qmax ─TensorScatter─► present_key_scale ──┘)

Static scales are initializers; ``per_channel`` ones (``[1, H, 1, D]``) are Expanded to
the batch, because blocked Q/DQ needs the scale to match the input in every axis but
the blocked one (onnx 1.23.2, ORT 1.32: a batch-shared scale fails on B > 1).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript import GraphBuilder, OpBuilder, TapeBuilder

from generator.onnx_build import builder_model, graph_builder
from proposals.quantized_attention.reference import GROUP, TINY, CacheQuant

CODE_TYPES = {
    "int8": ir.DataType.INT8,
    "uint8": ir.DataType.UINT8,
    "int4": ir.DataType.INT4,
    "float8e4m3fn": ir.DataType.FLOAT8E4M3FN,
}
F32, I64 = ir.DataType.FLOAT, ir.DataType.INT64


Op = OpBuilder | TapeBuilder  # a model being built, or nodes recorded to insert into one (accuracy.py)


def _const(op: Op, name: str, array: np.ndarray) -> ir.Value:
    return op.initializer(ir.tensor(array, name=name), name)


def group_size(quant: CacheQuant, head_dim: int) -> int:
    return head_dim if quant.granularity == "per_token" else GROUP


# --8<-- [start:read_scale]
def static_scale(op: Op, prefix: str, quant: CacheQuant, batch: ir.Value) -> tuple[ir.Value, ir.Value | None]:
    """The static scale (and zero point) as Q/DQ take it; per_channel Expanded to [B, H, 1, D]."""
    scale = _const(op, f"{prefix}_scale", quant.scale)
    zero = None if quant.zero_point is None else _const(op, f"{prefix}_zero_point", quant.zero_point)
    if quant.granularity == "per_tensor":
        return scale, zero
    # Blocked Q/DQ wants the scale's batch axis to match the cache's: [1,H,1,D] -> [B,H,1,D].
    shape = op.Concat(batch, _const(op, f"{prefix}_ones", np.ones(3, np.int64)), axis=0)
    scale = op.Expand(scale, shape, _name=f"{prefix}_scale_to_batch")
    if zero is not None:
        zero = op.Expand(zero, shape, _name=f"{prefix}_zero_point_to_batch")
    return scale, zero


# --8<-- [end:read_scale]


def _block_attrs(quant: CacheQuant, max_len: int, head_dim: int) -> dict:
    """Q/DQ attributes of the granularity: per tensor, blocked over tokens, or over channels."""
    if quant.granularity == "per_tensor":
        return {}
    if quant.granularity == "per_channel":
        return {"axis": 2, "block_size": max_len}  # one block spans every token of the cache
    return {"axis": 3, "block_size": group_size(quant, head_dim)}


# --8<-- [start:dynamic_scale]
def dynamic_scale(op: Op, prefix: str, rows: ir.Value, quant: CacheQuant, head_dim: int) -> ir.Value:
    """max(amax / qmax, tiny) over each token's group of G channels: [B, H, S, D/G]."""
    group = group_size(quant, head_dim)
    grouped = op.Reshape(rows, _const(op, f"{prefix}_groups", np.array([0, 0, 0, -1, group], np.int64)))
    amax = op.ReduceMax(op.Abs(grouped), _const(op, f"{prefix}_last", np.array([-1], np.int64)), keepdims=0)
    qmax = _const(op, f"{prefix}_qmax", np.array(quant.format.qmax, np.float32))
    tiny = _const(op, f"{prefix}_tiny", np.array(TINY, np.float32))
    return op.Max(op.Div(amax, qmax), tiny, _name=f"{prefix}_dynamic_scale")


# --8<-- [end:dynamic_scale]


def _scale_inputs(b: GraphBuilder, prefix: str, quant: CacheQuant, dims: tuple) -> list[ir.Value]:
    """``past_{prefix}_scale`` for dynamic scales (one per token and group), else nothing."""
    if not quant.dynamic:
        return []
    kv_heads, max_len, head_dim = dims
    groups = head_dim // group_size(quant, head_dim)
    return [b.input(f"past_{prefix}_scale", F32, ["batch", kv_heads, max_len, groups])]


def cache_io(
    op: OpBuilder, prefix: str, rows: ir.Value, quant: CacheQuant, pasts: list[ir.Value], batch, write, dims, mode
) -> tuple[list[ir.Value], ir.Value]:
    """Quantize ``rows``, scatter them (and their scales) into the caches, dequantize the cache.

    Returns (the present caches, in the order of ``pasts``; the float32 cache Attention reads).
    """
    _, max_len, head_dim = dims
    code_type = CODE_TYPES[quant.dtype]
    attrs = _block_attrs(quant, max_len, head_dim)
    if quant.dynamic:
        new_scale = dynamic_scale(op, prefix, rows, quant, head_dim)
        read_scale = op.TensorScatter(pasts[1], new_scale, write, axis=2, mode=mode, _name=f"scatter_{prefix}_scale")
        codes = op.QuantizeLinear(rows, new_scale, **attrs, output_dtype=code_type, _name=f"quantize_{prefix}")
        zero, scales = [], [read_scale]
    else:
        read_scale, zero_point = static_scale(op, prefix, quant, batch)
        zero, scales = ([] if zero_point is None else [zero_point]), []
        out_type = {} if zero else {"output_dtype": code_type}
        codes = op.QuantizeLinear(rows, read_scale, *zero, **attrs, **out_type, _name=f"quantize_{prefix}")
    present = op.TensorScatter(pasts[0], codes, write, axis=2, mode=mode, _name=f"scatter_{prefix}")
    read = op.DequantizeLinear(present, read_scale, *zero, **attrs, _name=f"dequantize_{prefix}")
    return [present, *scales], read


# --8<-- [start:step_model]
def quant_cache_step_model(
    k_quant: CacheQuant,
    v_quant: CacheQuant,
    *,
    q_heads: int,
    kv_heads: int,
    max_len: int,
    head_dim: int,
    mode: str = "linear",
    opset: int = 24,
    left_window_size: int = -1,
) -> onnx.ModelProto:
    """One attention step over a quantized cache: ``q, k, v`` f32 (B, H, seq, D) -> ``y``.

    Inputs: ``q``, ``k``, ``v``, ``past_key``, ``past_value`` (codes) [, ``past_key_scale``,
    ``past_value_scale`` (dynamic scales)], ``write_indices``, ``nonpad_kv_seqlen``.
    Outputs: ``y``, ``present_key``, ``present_value`` [, ``present_*_scale``].
    ``opset=25`` reads through Attention-25 (``left_window_size`` needs it).
    """
    b = graph_builder(f"quantized_{mode}_step", {"": opset})
    op = b.op
    q = b.input("q", F32, ["batch", q_heads, "seq", head_dim])
    k = b.input("k", F32, ["batch", kv_heads, "seq", head_dim])
    v = b.input("v", F32, ["batch", kv_heads, "seq", head_dim])
    dims = (kv_heads, max_len, head_dim)
    cache = ["batch", kv_heads, max_len, head_dim]
    k_past = [b.input("past_key", CODE_TYPES[k_quant.dtype], cache)]
    v_past = [b.input("past_value", CODE_TYPES[v_quant.dtype], cache)]
    k_past += _scale_inputs(b, "key", k_quant, dims)  # codes first, then scales
    v_past += _scale_inputs(b, "value", v_quant, dims)
    write, nonpad = b.input("write_indices", I64, ["batch"]), b.input("nonpad_kv_seqlen", I64, ["batch"])
    batch = op.Shape(k, start=0, end=1, _name="batch_size")
    k_out, key = cache_io(op, "key", k, k_quant, k_past, batch, write, dims, mode)
    v_out, value = cache_io(op, "value", v, v_quant, v_past, batch, write, dims, mode)
    window = {} if left_window_size < 0 else {"left_window_size": left_window_size, "right_window_size": 0}
    y = op.Attention(q, key, value, None, None, None, nonpad, is_causal=1, **window, _name="attention")
    b.add_output(y, "y")
    b.add_output(k_out[0], "present_key")
    b.add_output(v_out[0], "present_value")
    for out, name in ((k_out[1:], "present_key_scale"), (v_out[1:], "present_value_scale")):
        for value_ in out:
            b.add_output(value_, name)
    return builder_model(b)


# --8<-- [end:step_model]


def qdq_model(dtype: str, shape: list[int], *, opset: int = 24, with_zero_point: bool = False) -> onnx.ModelProto:
    """``x`` f32, ``scale`` f32 [, ``zero_point``] -> QuantizeLinear -> ``codes`` (as int32 or f32)
    and DequantizeLinear -> ``y``: the per-tensor ops the reference is checked against.

    int4 and float8 codes come back Cast to int32/float32 (exact) because onnxruntime's
    Python API cannot return int4 arrays.
    """
    b = graph_builder("qdq", {"": opset})
    op = b.op
    code_type = CODE_TYPES[dtype]
    x, scale = b.input("x", F32, shape), b.input("scale", F32, [])
    if with_zero_point:
        zero = b.input("zero_point", code_type, [])
        codes = op.QuantizeLinear(x, scale, zero)
        y = op.DequantizeLinear(codes, scale, zero)
    else:
        codes = op.QuantizeLinear(x, scale, output_dtype=code_type)
        y = op.DequantizeLinear(codes, scale)
    wide = F32 if dtype == "float8e4m3fn" else ir.DataType.INT32
    b.add_output(op.Cast(codes, to=wide), "codes")
    b.add_output(y, "y")
    return builder_model(b)
