# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import numpy as np
import onnx
from onnx.backend.test.case.base import Base
from onnx.backend.test.case.model import expect
from onnx.reference.ops.op_attention import _compute_attention


class TensorScatterAttention(Base):
    @staticmethod
    def export_tensorscatter_into_attention() -> None:
        """Gap: no Attention case reads a cache that TensorScatter just wrote (the static KV cache of a decode step)."""
        batch, heads, max_sequence_length, head_size = 2, 2, 4, 3
        scatter_key = onnx.helper.make_node("TensorScatter", ["past_key", "key", "write_indices"], ["present_key"])
        scatter_value = onnx.helper.make_node(
            "TensorScatter", ["past_value", "value", "write_indices"], ["present_value"]
        )
        lengths = onnx.helper.make_node("Add", ["write_indices", "one"], ["nonpad_kv_seqlen"])
        attention = onnx.helper.make_node(
            "Attention",
            ["query", "present_key", "present_value", "", "", "", "nonpad_kv_seqlen"],
            ["output"],
        )
        float4d = onnx.TensorProto.FLOAT
        cache = [batch, heads, max_sequence_length, head_size]
        step = [batch, heads, 1, head_size]
        graph = onnx.helper.make_graph(
            [scatter_key, scatter_value, lengths, attention],
            "tensorscatter_into_attention",
            [
                onnx.helper.make_tensor_value_info("query", float4d, step),
                onnx.helper.make_tensor_value_info("key", float4d, step),
                onnx.helper.make_tensor_value_info("value", float4d, step),
                onnx.helper.make_tensor_value_info("past_key", float4d, cache),
                onnx.helper.make_tensor_value_info("past_value", float4d, cache),
                onnx.helper.make_tensor_value_info("write_indices", onnx.TensorProto.INT64, [batch]),
            ],
            [
                onnx.helper.make_tensor_value_info("output", float4d, step),
                onnx.helper.make_tensor_value_info("present_key", float4d, cache),
                onnx.helper.make_tensor_value_info("present_value", float4d, cache),
            ],
            initializer=[onnx.numpy_helper.from_array(np.array([1], dtype=np.int64), "one")],
        )
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 24)])

        rng = np.random.default_rng(0)
        query, key, value = (rng.standard_normal(step).astype(np.float32) for _ in range(3))
        past_key = rng.standard_normal(cache).astype(np.float32)
        past_value = rng.standard_normal(cache).astype(np.float32)
        write_indices = np.array([1, 3], dtype=np.int64)  # one sample early, one at the last slot
        present_key, present_value = past_key.copy(), past_value.copy()
        for b, position in enumerate(write_indices):  # the decode step's one new row per sample
            present_key[b, :, position] = key[b, :, 0]
            present_value[b, :, position] = value[b, :, 0]
        output, _, _, _ = _compute_attention(query, present_key, present_value, nonpad_kv_seqlen=write_indices + 1)

        expect(
            model,
            inputs=[query, key, value, past_key, past_value, write_indices],
            outputs=[output.astype(np.float32), present_key, present_value],
            name="test_tensorscatter_into_attention",
        )
