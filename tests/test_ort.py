"""generator.ort: every onnxruntime session is configured in one place, and the CI's any-CPU
pass pins its intra-op threads through one variable."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from generator.errors import UsageError
from generator.ort import THREADS_VARIABLE, session


def _identity() -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])


def test_the_variable_overrides_the_callers_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(THREADS_VARIABLE, raising=False)
    assert session(_identity(), threads=2).get_session_options().intra_op_num_threads == 2
    monkeypatch.setenv(THREADS_VARIABLE, "1")
    sess = session(_identity(), threads=2)
    assert sess.get_session_options().intra_op_num_threads == 1
    np.testing.assert_array_equal(sess.run(None, {"x": np.ones(2, np.float32)})[0], np.ones(2))


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_thread_count_is_one_line(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(THREADS_VARIABLE, value)
    with pytest.raises(
        UsageError, match=rf"^{THREADS_VARIABLE}='{value}'; valid: a positive number of threads, or unset$"
    ):
        session(_identity())
