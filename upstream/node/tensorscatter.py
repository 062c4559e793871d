# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import numpy as np
import onnx
from onnx.backend.test.case.base import Base
from onnx.backend.test.case.node import expect


def tensor_scatter(past_cache, update, write_indices=None, axis=-2, mode="linear"):
    axis = axis % past_cache.ndim
    present_cache = past_cache.copy()
    max_sequence_length = past_cache.shape[axis]
    if write_indices is None:
        write_indices = np.zeros(past_cache.shape[0], dtype=np.int64)
    for b in range(past_cache.shape[0]):
        for s in range(update.shape[axis]):
            position = int(write_indices[b]) + s
            if mode == "circular":
                position %= max_sequence_length  # only the sequence index wraps, never the batch
            target = [b] + [slice(None)] * (past_cache.ndim - 1)
            source = [b] + [slice(None)] * (past_cache.ndim - 1)
            target[axis], source[axis] = position, s
            present_cache[tuple(target)] = update[tuple(source)]
    return present_cache


class TensorScatter(Base):
    @staticmethod
    def export_tensorscatter_circular_batch_larger_than_cache() -> None:
        """Gap: no case has batch > max_sequence_length, where onnx's reference wrapped the batch index (onnx#8353)."""
        node = onnx.helper.make_node(
            "TensorScatter",
            inputs=["past_cache", "update", "write_indices"],
            outputs=["present_cache"],
            mode="circular",
        )
        past_cache = np.arange(3 * 1 * 2 * 2, dtype=np.float32).reshape(3, 1, 2, 2)
        update = -np.arange(1, 3 * 1 * 1 * 2 + 1, dtype=np.float32).reshape(3, 1, 1, 2)
        write_indices = np.array([1, 0, 3], dtype=np.int64)
        present_cache = tensor_scatter(past_cache, update, write_indices, mode="circular")

        expect(
            node,
            inputs=[past_cache, update, write_indices],
            outputs=[present_cache],
            name="test_tensorscatter_circular_batch_larger_than_cache",
        )

    @staticmethod
    def export_tensorscatter_float16() -> None:
        """Gap: every TensorScatter case is float32; a float16 cache (the usual KV-cache type) has none."""
        node = onnx.helper.make_node(
            "TensorScatter",
            inputs=["past_cache", "update", "write_indices"],
            outputs=["present_cache"],
        )
        past_cache = np.linspace(-1, 1, 2 * 2 * 4 * 3, dtype=np.float16).reshape(2, 2, 4, 3)
        update = np.linspace(5, 7, 2 * 2 * 2 * 3, dtype=np.float16).reshape(2, 2, 2, 3)
        write_indices = np.array([2, 0], dtype=np.int64)
        present_cache = tensor_scatter(past_cache, update, write_indices)

        expect(
            node,
            inputs=[past_cache, update, write_indices],
            outputs=[present_cache],
            name="test_tensorscatter_float16",
        )

    @staticmethod
    def export_tensorscatter_without_write_indices() -> None:
        """Gap: no case omits the optional write_indices, which then default to 0 for every batch."""
        node = onnx.helper.make_node(
            "TensorScatter",
            inputs=["past_cache", "update"],
            outputs=["present_cache"],
            axis=1,
        )
        past_cache = np.ones((2, 5, 3), dtype=np.float32)
        update = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
        present_cache = tensor_scatter(past_cache, update, axis=1)

        expect(
            node,
            inputs=[past_cache, update],
            outputs=[present_cache],
            name="test_tensorscatter_without_write_indices",
        )
