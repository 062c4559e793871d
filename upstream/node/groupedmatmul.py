# SPDX-License-Identifier: Apache-2.0
from __future__ import annotations

import numpy as np
import onnx
from onnx.backend.test.case.base import Base
from onnx.backend.test.case.node import expect


def grouped_matmul(input, weights, group_indices, bias=None):
    output = np.einsum("mi,msij->msj", input, weights[group_indices])
    if bias is not None:
        output += bias[group_indices]
    return output


class GroupedMatMul(Base):
    @staticmethod
    def export_unused_group_nan_weights() -> None:
        """Gap: test_groupedmatmul_with_unused_group's idle group is finite, so computing every group passes it."""
        node = onnx.helper.make_node(
            "GroupedMatMul",
            inputs=["input", "weights", "group_indices", "bias"],
            outputs=["output"],
        )
        input = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32)
        weights = np.arange(12, dtype=np.float32).reshape(3, 2, 2)
        weights[1] = np.nan  # never selected: a NaN in the output means it was read
        bias = np.array([[1, 1], [np.nan, np.nan], [2, 2]], dtype=np.float32)
        group_indices = np.array([[0, 2], [2, 2], [0, 0]], dtype=np.int64)
        output = grouped_matmul(input, weights, group_indices, bias)

        expect(
            node,
            inputs=[input, weights, group_indices, bias],
            outputs=[output],
            name="test_groupedmatmul_unused_group_nan_weights",
            opset_imports=[onnx.helper.make_opsetid("", 29)],
        )
