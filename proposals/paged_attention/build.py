"""Model builder of the paged step, as the function op or inlined to standard ops.

The contiguous linear-buffer step it is compared with is the KV-cache proposal's own
:func:`proposals.kv_cache.build.cache_step_model` (TensorScatter x2 + Attention-24)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx.inliner
from onnx import TensorProto, helper

from generator.onnx_build import PROPOSAL_DOMAIN, make_model, stamp, tensor_info
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
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    hq, hkv, d = shape.q_heads, shape.kv_heads, shape.head_dim
    inputs = [
        tensor_info("query", np.float32, ["tokens", hq * d]),
        tensor_info("key", np.float32, ["tokens", hkv * d]),
        tensor_info("value", np.float32, ["tokens", hkv * d]),
        tensor_info("key_cache", np.float32, list(shape.cache_shape)),
        tensor_info("value_cache", np.float32, list(shape.cache_shape)),
        helper.make_tensor_value_info("cu_seqlens_q", i64, ["batch_plus_1"]),
        helper.make_tensor_value_info("seq_lens", i64, ["batch"]),
        helper.make_tensor_value_info("block_table", i64, ["batch", "max_blocks"]),
        helper.make_tensor_value_info("slot_mapping", i64, ["tokens"]),
    ]
    outputs = [
        helper.make_tensor_value_info("output", f32, ["tokens", hq * d]),
        helper.make_tensor_value_info("key_cache_out", f32, list(shape.cache_shape)),
        helper.make_tensor_value_info("value_cache_out", f32, list(shape.cache_shape)),
    ]
    # Every attribute is spelled out: onnx 1.23.2's inliner drops a function's attribute
    # defaults, and its ReferenceEvaluator fails on an omitted attribute without one.
    node = SCHEMA.make_node(PAGED_INPUTS, PAGED_OUTPUTS, scale=float(1.0 / np.sqrt(d)), is_causal=1, softcap=0.0)
    graph = helper.make_graph([node], "paged_attention_step", inputs, outputs)
    model = make_model(graph, {"": OPSET, PROPOSAL_DOMAIN: 1}, functions=[PagedAttention.to_function_proto()])
    if not inline:
        return model
    flat = onnx.inliner.inline_local_functions(model)
    del flat.opset_import[:]
    flat.opset_import.append(helper.make_opsetid("", OPSET))
    return stamp(flat)
