"""Rewrites between the standard-op form and ``com.microsoft.GroupQueryAttention`` (ORT 1.32).

The semantics match for symmetric int8 and 4-bit caches with a per-tensor or a static
per-(head, channel) scale on a linear cache: GQA quantizes new rows with
round-half-even and saturation (``k_quant_type`` PER_TENSOR / PER_CHANNEL), stores them
at ``seqlens_k + 1 - S`` (the linear step's ``write_indices``) and attends the valid slots.
Two differences are explicit here:

- 4-bit: GQA's cache is uint8 ``[B, H, L, D/2]`` holding ``code + 8`` nibbles, not ONNX
  int4; feeds and outputs convert with :func:`reference.to_gqa_int4` / ``from_gqa_int4``.
- Slots at or past ``total_sequence_length`` come back zeroed from a GQA session that
  does not share the past/present buffer; the standard form preserves them. Outputs are
  equal on the valid slots (``< nonpad_kv_seqlen``), which are all that Attention reads.

Everything else has a one-line reason in :data:`NO_GQA_FORM`.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.tape import Tape

from generator.errors import UsageError
from generator.onnx_build import stamp
from proposals.quantized_attention.build import CODE_TYPES, quant_cache_step_model
from proposals.quantized_attention.reference import CacheQuant

F32, I32, I64 = ir.DataType.FLOAT, ir.DataType.INT32, ir.DataType.INT64
GQA_TYPES = {"per_tensor": "PER_TENSOR", "per_channel": "PER_CHANNEL"}

# --8<-- [start:reasons]
NO_GQA_FORM = {
    "uint8": "GQA quantization is symmetric: it has no zero-point input, so uint8 with a zero point has no GQA form",
    "float8e4m3fn": "ORT 1.32 registers no CPU GroupQueryAttention kernel for a float8e4m3fn cache (CUDA only)",
    "per_token": "GQA k_quant_type has no per-token mode (NONE, PER_TENSOR, PER_CHANNEL; ORT issue #29783)",
    "per_token_group": "GQA has no per-token group scales; llama.cpp-style blocks of 32 have no GQA form",
    "circular": "GQA writes at seqlens_k, a linear position; a circular cache has no GQA form",
    "mixed": "GQA's kv_cache_bit_width is shared by K and V, so both caches must have the same dtype",
    "attributes": "this rewrite maps is_causal=1 only; GQA's local_window_size, softcap and scale are not mapped yet",
}
# --8<-- [end:reasons]


def check_gqa_form(k_quant: CacheQuant, v_quant: CacheQuant, mode: str = "linear") -> None:
    """A one-line UsageError with the reason when the step has no GQA equivalent."""
    for quant in (k_quant, v_quant):
        for key in (quant.dtype, quant.granularity):
            if key in NO_GQA_FORM:
                raise UsageError(NO_GQA_FORM[key])
    if k_quant.dtype != v_quant.dtype:
        raise UsageError(NO_GQA_FORM["mixed"])
    if mode != "linear":
        raise UsageError(NO_GQA_FORM["circular"])


def _value(name: str, dtype: ir.DataType, shape: list) -> ir.Value:
    return ir.Value(name=name, type=ir.TensorType(dtype), shape=ir.Shape(shape))


def _const(tape: Tape, name: str, array: np.ndarray) -> ir.Value:
    return tape.initializer(ir.tensor(array, name=name), name=name)


# --8<-- [start:gqa_step]
def gqa_step_model(
    k_quant: CacheQuant, v_quant: CacheQuant, *, q_heads: int, kv_heads: int, max_len: int, head_dim: int
) -> onnx.ModelProto:
    """The standard form's step as one GroupQueryAttention, with the same graph I/O.

    q/k/v (B, H, S, D) are packed to GQA's (B, S, H*D), ``seqlens_k = nonpad - 1`` and
    ``total_sequence_length = max(nonpad)`` as int32; ``write_indices`` stays an input but
    GQA derives the write position itself. A 4-bit cache is GQA's uint8 (B, H, L, D/2).
    """
    check_gqa_form(k_quant, v_quant)
    four_bit = k_quant.dtype == "int4"
    cache_type, cache_dim = (ir.DataType.UINT8, head_dim // 2) if four_bit else (CODE_TYPES["int8"], head_dim)
    tape = Tape()
    q = _value("q", F32, ["batch", q_heads, "seq", head_dim])
    k = _value("k", F32, ["batch", kv_heads, "seq", head_dim])
    v = _value("v", F32, ["batch", kv_heads, "seq", head_dim])
    caches = [_value(f"past_{n}", cache_type, ["batch", kv_heads, max_len, cache_dim]) for n in ("key", "value")]
    write, nonpad = _value("write_indices", I64, ["batch"]), _value("nonpad_kv_seqlen", I64, ["batch"])
    packed = _const(tape, "bsd_shape", np.array([0, 0, -1], np.int64))
    qkv = [tape.op("Reshape", [tape.op("Transpose", [x], {"perm": [0, 2, 1, 3]}), packed]) for x in (q, k, v)]
    one = _const(tape, "one", np.array(1, np.int64))
    seqlens_k = tape.op("Cast", [tape.op("Sub", [nonpad, one])], {"to": I32.value})
    total = tape.op("Cast", [tape.op("ReduceMax", [nonpad], {"keepdims": 0})], {"to": I32.value})
    scales = []
    for name, quant in (("k_scale", k_quant), ("v_scale", v_quant)):
        scale = quant.scale.reshape(1) if quant.granularity == "per_tensor" else quant.scale
        scales.append(_const(tape, name, scale))
    y, present_key, present_value = tape.op_multi_out(
        "GroupQueryAttention",
        [*qkv, *caches, seqlens_k, total, None, None, None, None, None, *scales],
        {
            "num_heads": q_heads,
            "kv_num_heads": kv_heads,
            "k_quant_type": GQA_TYPES[k_quant.granularity],
            "v_quant_type": GQA_TYPES[v_quant.granularity],
            "kv_cache_bit_width": 4 if four_bit else 8,
        },
        domain="com.microsoft",
        name="group_query_attention",
        outputs=[
            ir.Value(name="y_bsd"),
            _value("present_key", cache_type, ["batch", kv_heads, max_len, cache_dim]),
            _value("present_value", cache_type, ["batch", kv_heads, max_len, cache_dim]),
        ],
    )
    heads = _const(tape, "bshd_shape", np.array([0, 0, q_heads, head_dim], np.int64))
    y = tape.op(
        "Transpose",
        [tape.op("Reshape", [y, heads])],
        {"perm": [0, 2, 1, 3]},
        output=_value("y", F32, ["batch", q_heads, "seq", head_dim]),
    )
    graph = ir.Graph(
        [q, k, v, *caches, write, nonpad],
        [y, present_key, present_value],
        nodes=tape.nodes,
        initializers=tape.initializers,
        opset_imports={"": 24, "com.microsoft": 1},
        name="gqa_quantized_step",
    )
    return stamp(ir.serde.serialize_model(ir.Model(graph, ir_version=10)))


# --8<-- [end:gqa_step]


def _initializer(graph: ir.Graph, name: str) -> np.ndarray | None:
    value = graph.initializers.get(name)
    return None if value is None else value.const_value.numpy()


def _dims(graph: ir.Graph) -> dict[str, int]:
    q, past = graph.inputs[0], next(v for v in graph.inputs if v.name == "past_key")
    return {"q_heads": q.shape[1], "kv_heads": past.shape[1], "max_len": past.shape[2], "head_dim": q.shape[3]}


# --8<-- [start:rewrites]
def cache_quant_of(model: onnx.ModelProto, role: str) -> tuple[CacheQuant, str]:
    """The CacheQuant (and cache mode) a standard-form step uses for ``role`` (key or value)."""
    graph = ir.serde.deserialize_model(model).graph
    nodes = {n.name: n for n in graph}
    quantize, scatter = nodes[f"quantize_{role}"], nodes[f"scatter_{role}"]
    dtype = next(k for k, t in CODE_TYPES.items() if t == scatter.outputs[0].dtype)
    mode = scatter.attributes.get_string("mode", "linear")
    if f"past_{role}_scale" in {v.name for v in graph.inputs}:
        block = quantize.attributes.get_int("block_size", 0)
        granularity = "per_token" if block == graph.inputs[0].shape[3] else "per_token_group"
        return CacheQuant(dtype, granularity), mode
    scale, zero = _initializer(graph, f"{role}_scale"), _initializer(graph, f"{role}_zero_point")
    granularity = "per_tensor" if scale.ndim == 0 else "per_channel"
    return CacheQuant(dtype, granularity, scale, zero), mode


def to_gqa(model: onnx.ModelProto) -> onnx.ModelProto:
    """Standard-form step (:func:`build.quant_cache_step_model`) -> GroupQueryAttention step."""
    graph = ir.serde.deserialize_model(model).graph
    attention = next(n for n in graph if n.op_type == "Attention")
    if set(attention.attributes) != {"is_causal"} or attention.attributes.get_int("is_causal") != 1:
        raise UsageError(NO_GQA_FORM["attributes"])
    (k_quant, mode), (v_quant, _) = cache_quant_of(model, "key"), cache_quant_of(model, "value")
    check_gqa_form(k_quant, v_quant, mode)
    return gqa_step_model(k_quant, v_quant, **_dims(graph))


def from_gqa(model: onnx.ModelProto) -> onnx.ModelProto:
    """GroupQueryAttention step (:func:`gqa_step_model`) -> the standard form that computes the same."""
    graph = ir.serde.deserialize_model(model).graph
    gqa = next(n for n in graph if n.op_type == "GroupQueryAttention")
    bits = gqa.attributes.get_int("kv_cache_bit_width", 8)
    dtype = {8: "int8", 4: "int4"}[bits]
    quants = []
    for prefix in ("k", "v"):
        kind = gqa.attributes.get_string(f"{prefix}_quant_type", "NONE")
        if kind not in ("PER_TENSOR", "PER_CHANNEL"):
            raise UsageError(
                f"{prefix}_quant_type={kind!r}: only PER_TENSOR and PER_CHANNEL have a quantized standard form"
            )
        scale = _initializer(graph, f"{prefix}_scale").astype(np.float32)
        quants.append(
            CacheQuant(
                dtype,
                "per_tensor" if kind == "PER_TENSOR" else "per_channel",
                scale.reshape(()) if kind == "PER_TENSOR" else scale,
            )
        )
    dims = _dims(graph)
    if bits == 4:
        dims["head_dim"] = graph.inputs[0].shape[3]
    return quant_cache_step_model(*quants, **dims)


# --8<-- [end:rewrites]
