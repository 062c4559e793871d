"""Standard-op builders of a quantized KV cache (onnx-ir tape, named dtypes, opset 24/25).

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
from onnx_ir.tape import Tape

from generator.onnx_build import stamp
from proposals.quantized_attention.reference import GROUP, TINY, CacheQuant

CODE_TYPES = {
    "int8": ir.DataType.INT8,
    "uint8": ir.DataType.UINT8,
    "int4": ir.DataType.INT4,
    "float8e4m3fn": ir.DataType.FLOAT8E4M3FN,
}
F32, I64 = ir.DataType.FLOAT, ir.DataType.INT64


def _value(name: str, dtype: ir.DataType, shape: list) -> ir.Value:
    return ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(shape))


def _const(tape: Tape, name: str, array: np.ndarray) -> ir.Value:
    return tape.initializer(ir.tensor(array, name=name), name=name)


def _group(quant: CacheQuant, head_dim: int) -> int:
    return head_dim if quant.granularity == "per_token" else GROUP


# --8<-- [start:read_scale]
def _static_scale(tape: Tape, prefix: str, quant: CacheQuant, batch: ir.Value) -> tuple[ir.Value, ir.Value | None]:
    """The static scale (and zero point) as Q/DQ take it; per_channel Expanded to [B, H, 1, D]."""
    scale = _const(tape, f"{prefix}_scale", quant.scale)
    zero = None if quant.zero_point is None else _const(tape, f"{prefix}_zero_point", quant.zero_point)
    if quant.granularity == "per_tensor":
        return scale, zero
    # Blocked Q/DQ wants the scale's batch axis to match the cache's: [1,H,1,D] -> [B,H,1,D].
    shape = tape.op("Concat", [batch, _const(tape, f"{prefix}_ones", np.ones(3, np.int64))], {"axis": 0})
    scale = tape.op("Expand", [scale, shape], name=f"{prefix}_scale_to_batch")
    if zero is not None:
        zero = tape.op("Expand", [zero, shape], name=f"{prefix}_zero_point_to_batch")
    return scale, zero


# --8<-- [end:read_scale]


def _block_attrs(quant: CacheQuant, max_len: int, head_dim: int) -> dict:
    """Q/DQ attributes of the granularity: per tensor, blocked over tokens, or over channels."""
    if quant.granularity == "per_tensor":
        return {}
    if quant.granularity == "per_channel":
        return {"axis": 2, "block_size": max_len}  # one block spans every token of the cache
    return {"axis": 3, "block_size": _group(quant, head_dim)}


# --8<-- [start:dynamic_scale]
def _dynamic_scale(tape: Tape, prefix: str, rows: ir.Value, quant: CacheQuant, head_dim: int) -> ir.Value:
    """max(amax / qmax, tiny) over each token's group of G channels: [B, H, S, D/G]."""
    group = _group(quant, head_dim)
    grouped = tape.op("Reshape", [rows, _const(tape, f"{prefix}_groups", np.array([0, 0, 0, -1, group], np.int64))])
    amax = tape.op(
        "ReduceMax",
        [tape.op("Abs", [grouped]), _const(tape, f"{prefix}_last", np.array([-1], np.int64))],
        {"keepdims": 0},
    )
    qmax = _const(tape, f"{prefix}_qmax", np.array(quant.format.qmax, np.float32))
    return tape.op(
        "Max",
        [tape.op("Div", [amax, qmax]), _const(tape, f"{prefix}_tiny", np.array(TINY, np.float32))],
        name=f"{prefix}_dynamic_scale",
    )


# --8<-- [end:dynamic_scale]


def _cache_io(
    tape: Tape, prefix: str, rows: ir.Value, quant: CacheQuant, batch: ir.Value, write: ir.Value, dims: tuple, mode: str
) -> tuple[list[ir.Value], list[ir.Value], ir.Value]:
    """Quantize ``rows``, scatter them (and their scales) into the caches, dequantize the cache.

    Returns (graph inputs, graph outputs, the float32 cache Attention reads).
    """
    kv_heads, max_len, head_dim = dims
    code_type = CODE_TYPES[quant.dtype]
    past = _value(f"past_{prefix}", code_type, ["batch", kv_heads, max_len, head_dim])
    tape_inputs = [past]
    attrs = _block_attrs(quant, max_len, head_dim)
    scatter = {"axis": 2, "mode": mode}
    if quant.dynamic:
        groups = head_dim // _group(quant, head_dim)
        past_scale = _value(f"past_{prefix}_scale", F32, ["batch", kv_heads, max_len, groups])
        tape_inputs = [past, past_scale]
        new_scale = _dynamic_scale(tape, prefix, rows, quant, head_dim)
        q_args, zero = [rows, new_scale], None
        present_scale = tape.op(
            "TensorScatter",
            [past_scale, new_scale, write],
            scatter,
            name=f"scatter_{prefix}_scale",
            output=_value(f"present_{prefix}_scale", F32, ["batch", kv_heads, max_len, groups]),
        )
        read_scale = present_scale
    else:
        read_scale, zero = _static_scale(tape, prefix, quant, batch)
        q_args = [rows, read_scale] + ([zero] if zero is not None else [])
        present_scale = None
    codes = tape.op(
        "QuantizeLinear",
        q_args,
        {**attrs, "output_dtype": code_type.value} if zero is None else attrs,
        name=f"quantize_{prefix}",
    )
    present = tape.op(
        "TensorScatter",
        [past, codes, write],
        scatter,
        name=f"scatter_{prefix}",
        output=_value(f"present_{prefix}", code_type, ["batch", kv_heads, max_len, head_dim]),
    )
    dq_args = [present, read_scale] + ([zero] if zero is not None else [])
    read = tape.op("DequantizeLinear", dq_args, attrs, name=f"dequantize_{prefix}")
    outputs = [present] + ([present_scale] if present_scale is not None else [])
    return tape_inputs, outputs, read


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
    write, nonpad = _value("write_indices", I64, ["batch"]), _value("nonpad_kv_seqlen", I64, ["batch"])
    tape = Tape()
    q = _value("q", F32, ["batch", q_heads, "seq", head_dim])
    k = _value("k", F32, ["batch", kv_heads, "seq", head_dim])
    v = _value("v", F32, ["batch", kv_heads, "seq", head_dim])
    batch = tape.op("Shape", [k], {"start": 0, "end": 1}, name="batch_size")
    dims = (kv_heads, max_len, head_dim)
    k_in, k_out, key = _cache_io(tape, "key", k, k_quant, batch, write, dims, mode)
    v_in, v_out, value = _cache_io(tape, "value", v, v_quant, batch, write, dims, mode)
    window = {} if left_window_size < 0 else {"left_window_size": left_window_size, "right_window_size": 0}
    y = tape.op(
        "Attention",
        [q, key, value, None, None, None, nonpad],
        {"is_causal": 1, **window},
        name="attention",
        output=_value("y", F32, ["batch", q_heads, "seq", head_dim]),
    )
    inputs = [q, k, v, k_in[0], v_in[0], *k_in[1:], *v_in[1:], write, nonpad]
    outputs = [y, k_out[0], v_out[0], *k_out[1:], *v_out[1:]]
    graph = ir.Graph(
        inputs,
        outputs,
        nodes=tape.nodes,
        initializers=tape.initializers,
        opset_imports={"": opset},
        name=f"quantized_{mode}_step",
    )
    return stamp(ir.serde.serialize_model(ir.Model(graph, ir_version=10)))


# --8<-- [end:step_model]


def qdq_model(dtype: str, shape: list[int], *, opset: int = 24, with_zero_point: bool = False) -> onnx.ModelProto:
    """``x`` f32, ``scale`` f32 [, ``zero_point``] -> QuantizeLinear -> ``codes`` (as int32 or f32)
    and DequantizeLinear -> ``y``: the per-tensor ops the reference is checked against.

    int4 and float8 codes come back Cast to int32/float32 (exact) because onnxruntime's
    Python API cannot return int4 arrays.
    """
    tape = Tape()
    code_type = CODE_TYPES[dtype]
    x = _value("x", F32, shape)
    scale = _value("scale", F32, [])
    inputs = [x, scale]
    if with_zero_point:
        zero = _value("zero_point", code_type, [])
        inputs.append(zero)
        codes = tape.op("QuantizeLinear", [x, scale, zero])
        y = tape.op("DequantizeLinear", [codes, scale, zero], output=_value("y", F32, shape))
    else:
        codes = tape.op("QuantizeLinear", [x, scale], {"output_dtype": code_type.value})
        y = tape.op("DequantizeLinear", [codes, scale], output=_value("y", F32, shape))
    wide = F32 if dtype == "float8e4m3fn" else ir.DataType.INT32
    out = tape.op("Cast", [codes], {"to": wide.value}, output=_value("codes", wide, shape))
    graph = ir.Graph(
        inputs, [out, y], nodes=tape.nodes, initializers=tape.initializers, opset_imports={"": opset}, name="qdq"
    )
    return stamp(ir.serde.serialize_model(ir.Model(graph, ir_version=10)))
