"""Model builder of the paged step, as the function op or inlined to standard ops.

The contiguous linear-buffer step it is compared with is the KV-cache proposal's own
:func:`proposals.kv_cache.build.cache_step_model` (TensorScatter x2 + Attention-24)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx.inliner
import onnx_ir as ir

from generator.onnx_build import PROPOSAL_DOMAIN, builder_model, graph_builder, stamp
from proposals.paged_attention.function_op import OPSET, PagedAttention
from proposals.paged_attention.spec import SCHEMA

PAGED_INPUTS = (
    "query",
    "key",
    "value",
    "key_cache",
    "value_cache",
    "cu_seqlens_q",
    "seq_lens",
    "block_table",
    "slot_mapping",
)
PAGED_OUTPUTS = ("output", "key_cache_out", "value_cache_out")
FLOAT, INT64 = ir.DataType.FLOAT, ir.DataType.INT64


@dataclass(frozen=True)
class PagedShape:
    """Static sizes of one attention layer's paged cache."""

    num_blocks: int
    block_size: int
    q_heads: int
    kv_heads: int
    head_dim: int

    @property
    def cache_shape(self) -> tuple[int, int, int, int]:
        return (self.num_blocks, self.block_size, self.kv_heads, self.head_dim)

    def empty_cache(self) -> np.ndarray:
        return np.zeros(self.cache_shape, dtype=np.float32)


def paged_model(shape: PagedShape, *, inline: bool = True) -> onnx.ModelProto:
    """One PagedAttention step; ``inline=False`` keeps it a model-local function call."""
    hq, hkv, d = shape.q_heads, shape.kv_heads, shape.head_dim
    cache = list(shape.cache_shape)
    b = graph_builder("paged_attention_step", {"": OPSET, PROPOSAL_DOMAIN: 1})
    inputs = [
        b.input("query", FLOAT, ["tokens", hq * d]),
        b.input("key", FLOAT, ["tokens", hkv * d]),
        b.input("value", FLOAT, ["tokens", hkv * d]),
        b.input("key_cache", FLOAT, cache),
        b.input("value_cache", FLOAT, cache),
        b.input("cu_seqlens_q", INT64, ["batch_plus_1"]),
        b.input("seq_lens", INT64, ["batch"]),
        b.input("block_table", INT64, ["batch", "max_blocks"]),
        b.input("slot_mapping", INT64, ["tokens"]),
    ]
    # Every attribute is spelled out: onnx 1.23.2's inliner drops a function's attribute
    # defaults, and its ReferenceEvaluator fails on an omitted attribute without one.
    outputs = SCHEMA.call(b.op, *inputs, scale=float(1.0 / np.sqrt(d)), is_causal=1, softcap=0.0)
    for out, name, dims in zip(outputs, PAGED_OUTPUTS, (["tokens", hq * d], cache, cache), strict=True):
        out.type, out.shape = ir.TensorType(FLOAT), ir.Shape(dims)
        b.add_output(out, name)
    model = builder_model(b, functions=[PagedAttention.to_function_proto()])
    if not inline:
        return model
    flat = ir.from_proto(onnx.inliner.inline_local_functions(model))
    flat.opset_imports.pop(PROPOSAL_DOMAIN)  # inlined: nothing calls the proposal's domain
    return stamp(ir.to_proto(flat))
