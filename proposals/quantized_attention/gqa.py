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

:class:`StandardToGqa` is the rewrite, an onnx-ir pass; :func:`from_gqa` goes back by
rebuilding the standard form from the GQA node's attributes and scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common
from onnxscript import TapeBuilder

from generator.errors import UsageError
from generator.onnx_build import stamp
from proposals.quantized_attention.build import CODE_TYPES, quant_cache_step_model
from proposals.quantized_attention.reference import CacheQuant

F32, I32, I64 = ir.DataType.FLOAT, ir.DataType.INT32, ir.DataType.INT64
GQA_TYPES = {"per_tensor": "PER_TENSOR", "per_channel": "PER_CHANNEL"}
GQA_SCALE_INPUTS = {"k": 12, "v": 13}  # k_scale, v_scale in com.microsoft.GroupQueryAttention

# --8<-- [start:reasons]
NO_GQA_FORM = {
    "uint8": "GQA quantization is symmetric: it has no zero-point input, so uint8 with a zero point has no GQA form",
    "float8e4m3fn": "ORT 1.32 registers no CPU GroupQueryAttention kernel for a float8e4m3fn cache (CUDA only)",
    "per_token": "GQA k_quant_type has no per-token mode (NONE, PER_TENSOR, PER_CHANNEL; ORT issue #29783)",
    "per_token_group": "GQA has no per-token group scales; llama.cpp-style blocks of 32 have no GQA form",
    "circular": "GQA writes at seqlens_k, a linear position; a circular cache has no GQA form",
    "mixed": "GQA's kv_cache_bit_width is shared by K and V, so both caches must have the same dtype",
    "attributes": "this rewrite maps is_causal=1 only; GQA's local_window_size, softcap and scale are not mapped yet",
    "gqa_attributes": (
        "from_gqa maps num_heads, kv_num_heads, k/v_quant_type and kv_cache_bit_width only: the standard step "
        "it rebuilds (quant_cache_step_model) has no window, softcap, scale or rotary setting"
    ),
}
# GroupQueryAttention attributes from_gqa reads; any other one it refuses (NO_GQA_FORM["gqa_attributes"]).
MAPPED_GQA_ATTRIBUTES = frozenset({"num_heads", "kv_num_heads", "k_quant_type", "v_quant_type", "kv_cache_bit_width"})
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


@dataclass(frozen=True)
class QuantSite:
    """One quantized cache feeding Attention: QuantizeLinear -> TensorScatter -> DequantizeLinear."""

    quantize: ir.Node
    scatter: ir.Node
    dequantize: ir.Node
    quant: CacheQuant
    mode: str

    @property
    def rows(self) -> ir.Value:  # the new tokens' float rows (B, H, S, D)
        return self.quantize.inputs[0]

    @property
    def past(self) -> ir.Value:
        return self.scatter.inputs[0]

    @property
    def present(self) -> ir.Value:
        return self.scatter.outputs[0]


def _producer(value: ir.Value | None, op_type: str, what: str) -> ir.Node:
    node = None if value is None else value.producer()
    if node is None or node.op_type != op_type or node.domain != "":
        raise UsageError(
            f"{what} is not a {op_type} output; expected QuantizeLinear -> TensorScatter -> DQ -> Attention"
        )
    return node


def _static(value: ir.Value | None) -> np.ndarray | None:
    """A static scale or zero point: an initializer, possibly Expanded to the batch."""
    if value is None:
        return None
    producer = value.producer()
    if producer is not None and producer.op_type == "Expand":
        value = producer.inputs[0]
    if value.const_value is None:
        raise UsageError(f"scale {value.name!r} is neither a constant nor a scale cache")
    return value.const_value.numpy()


def quant_site(attention: ir.Node, role: str) -> QuantSite:
    """The quantized cache behind Attention's key (input 1) or value (input 2), and its settings."""
    dequantize = _producer(attention.inputs[1 if role == "key" else 2], "DequantizeLinear", f"Attention's {role}")
    scatter = _producer(dequantize.inputs[0], "TensorScatter", f"the dequantized {role} cache")
    quantize = _producer(scatter.inputs[1], "QuantizeLinear", f"the {role} cache's update")
    dtype = next(k for k, t in CODE_TYPES.items() if t == scatter.outputs[0].dtype)
    scale = dequantize.inputs[1]
    if scale.producer() is not None and scale.producer().op_type == "TensorScatter":  # a scale cache
        block = quantize.attributes.get_int("block_size", 0)
        quant = CacheQuant(dtype, "per_token" if block == quantize.inputs[0].shape[3] else "per_token_group")
    else:
        array = _static(scale)
        zero = _static(dequantize.inputs[2] if len(dequantize.inputs) > 2 else None)
        quant = CacheQuant(dtype, "per_tensor" if array.ndim == 0 else "per_channel", array, zero)
    return QuantSite(quantize, scatter, dequantize, quant, scatter.attributes.get_string("mode", "linear"))


def _attention(graph: ir.Graph) -> ir.Node:
    found = [n for n in graph if n.op_type == "Attention" and n.domain == ""]
    if len(found) != 1:
        raise UsageError(f"expected one Attention node (one quantized step), found {len(found)}")
    attention = found[0]
    if set(attention.attributes) != {"is_causal"} or attention.attributes.get_int("is_causal") != 1:
        raise UsageError(NO_GQA_FORM["attributes"])
    return attention


# --8<-- [start:gqa_step]
def _gqa_nodes(op: TapeBuilder, q: ir.Value, sites: tuple[QuantSite, QuantSite], nonpad: ir.Value, q_heads: int):
    """Pack q/k/v to (B, S, H*D), derive seqlens_k and total_sequence_length as int32, call
    GroupQueryAttention on the caches, and unpack y to (B, Hq, S, D).

    Returns ``(y, present_key, present_value)``.
    """
    head_dim = q.shape[3]
    packed = op.Constant(value_ints=[0, 0, -1])
    qkv = [op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]), packed) for x in (q, *(s.rows for s in sites))]
    seqlens_k = op.Cast(op.Sub(nonpad, op.Constant(value_int=1)), to=ir.DataType.INT32)
    total = op.Cast(op.ReduceMax(nonpad, keepdims=0), to=ir.DataType.INT32)
    scales = []
    for name, site in zip(("k_scale", "v_scale"), sites, strict=True):
        scale = site.quant.scale.reshape(1) if site.quant.granularity == "per_tensor" else site.quant.scale
        scales.append(op.initializer(ir.tensor(scale), name))
    kv_heads = sites[0].past.shape[1]
    y, present_key, present_value = op.GroupQueryAttention(
        *qkv,
        *(s.past for s in sites),
        seqlens_k,
        total,
        None,  # cos_cache, sin_cache, position_ids, attention_bias, head_sink: unused
        None,
        None,
        None,
        None,
        *scales,
        num_heads=q_heads,
        kv_num_heads=kv_heads,
        k_quant_type=GQA_TYPES[sites[0].quant.granularity],
        v_quant_type=GQA_TYPES[sites[1].quant.granularity],
        kv_cache_bit_width=4 if sites[0].quant.dtype == "int4" else 8,
        _domain="com.microsoft",
        _version=1,
        _outputs=3,
        _name="group_query_attention",
    )
    y = op.Transpose(op.Reshape(y, op.Constant(value_ints=[0, 0, q_heads, head_dim])), perm=[0, 2, 1, 3])
    return y, present_key, present_value


# --8<-- [end:gqa_step]


# --8<-- [start:rewrites]
class StandardToGqa(onnx_ir.passes.InPlacePass):
    """A standard-form quantized step (:func:`build.quant_cache_step_model`) as one GroupQueryAttention.

    Match conditions (a model that breaks one is refused with a one-line UsageError):

    1. the graph has one standard-domain ``Attention``, with ``is_causal=1`` and no other
       attribute;
    2. its key and value inputs are each ``DequantizeLinear(TensorScatter(past,
       QuantizeLinear(rows)))``, the past cache being a graph input and the presents
       graph outputs;
    3. the settings read off those nodes have a GQA form (:func:`check_gqa_form`): int8 or
       int4, symmetric, static per-tensor or per-channel scales, both caches of one dtype,
       a linear cache.

    The graph keeps its inputs (``write_indices`` stays, unread: GQA derives the write
    position from ``seqlens_k``); a 4-bit cache becomes GQA's uint8 (B, H, L, D/2).
    """

    def call(self, model: ir.Model) -> onnx_ir.passes.PassResult:
        graph = model.graph
        attention = _attention(graph)
        sites = (quant_site(attention, "key"), quant_site(attention, "value"))
        check_gqa_form(
            sites[0].quant, sites[1].quant, "linear" if {s.mode for s in sites} == {"linear"} else "circular"
        )
        q, nonpad = attention.inputs[0], attention.inputs[6]
        op = TapeBuilder()
        y, *presents = _gqa_nodes(op, q, sites, nonpad, q_heads=q.shape[1])
        for value in op.initializers:
            graph.register_initializer(value)
        graph.insert_before(attention, op.nodes)
        y.name, y.type, y.shape = "y", attention.outputs[0].type, attention.outputs[0].shape
        attention.outputs[0].replace_all_uses_with(y, replace_graph_outputs=True)
        for site, present in zip(sites, presents, strict=True):
            if site.quant.dtype == "int4":  # GQA's 4-bit cache: uint8 nibble pairs
                site.past.type = ir.TensorType(ir.DataType.UINT8)
                site.past.shape = ir.Shape([*site.past.shape[:3], site.past.shape[3] // 2])
            present.name, present.type, present.shape = site.present.name, site.past.type, site.past.shape
            site.present.replace_all_uses_with(present, replace_graph_outputs=True)
        onnx_ir.passes.common.RemoveUnusedNodesPass()(model)
        graph.opset_imports["com.microsoft"] = 1
        graph.name = "gqa_quantized_step"
        return onnx_ir.passes.PassResult(model, modified=True)


def to_gqa(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run :class:`StandardToGqa` on a model proto: the GroupQueryAttention step, stamped."""
    ir_model = StandardToGqa()(ir.serde.deserialize_model(model)).model  # alone: Sequential wraps UsageError
    ir_model = onnx_ir.passes.common.NameFixPass()(ir_model).model  # names for the new values
    return stamp(ir.serde.serialize_model(ir_model))


def gqa_step_model(
    k_quant: CacheQuant, v_quant: CacheQuant, *, q_heads: int, kv_heads: int, max_len: int, head_dim: int
) -> onnx.ModelProto:
    """The standard form's step (:func:`build.quant_cache_step_model`) rewritten to one
    GroupQueryAttention, with the same graph I/O (a 4-bit cache as GQA's uint8 (B, H, L, D/2))."""
    check_gqa_form(k_quant, v_quant)
    dims = {"q_heads": q_heads, "kv_heads": kv_heads, "max_len": max_len, "head_dim": head_dim}
    return to_gqa(quant_cache_step_model(k_quant, v_quant, **dims))


def _dims(graph: ir.Graph) -> dict[str, int]:
    q, past = graph.inputs[0], next(v for v in graph.inputs if v.name == "past_key")
    return {"q_heads": q.shape[1], "kv_heads": past.shape[1], "max_len": past.shape[2], "head_dim": q.shape[3]}


def from_gqa(model: onnx.ModelProto) -> onnx.ModelProto:
    """GroupQueryAttention step (:func:`gqa_step_model`) -> the standard form that computes the same."""
    graph = ir.serde.deserialize_model(model).graph
    gqa = next(n for n in graph if n.op_type == "GroupQueryAttention")
    unmapped = sorted(set(gqa.attributes) - MAPPED_GQA_ATTRIBUTES)
    if unmapped:  # e.g. local_window_size, softcap, scale: refused, never silently dropped
        raise UsageError(f"GroupQueryAttention sets {', '.join(unmapped)}; {NO_GQA_FORM['gqa_attributes']}")
    bits = gqa.attributes.get_int("kv_cache_bit_width", 8)
    dtype = {8: "int8", 4: "int4"}[bits]
    quants = []
    for prefix in ("k", "v"):
        kind = gqa.attributes.get_string(f"{prefix}_quant_type", "NONE")
        if kind not in ("PER_TENSOR", "PER_CHANNEL"):
            raise UsageError(
                f"{prefix}_quant_type={kind!r}: only PER_TENSOR and PER_CHANNEL have a quantized standard form"
            )
        scale = gqa.inputs[GQA_SCALE_INPUTS[prefix]].const_value.numpy().astype(np.float32)
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
