"""The claims the proposal page prints, asserted."""

from __future__ import annotations

import numpy as np

from proposals.kv_cache import cases, demos


def test_circular_ring_equals_attention25_window_on_onnxruntime() -> None:
    rows = demos.circular_vs_window_on_ort(slots=4, steps=10)
    assert [nonpad for _, nonpad, _ in rows] == [1, 2, 3, 4, 4, 4, 4, 4, 4, 4]
    assert max(err for _, _, err in rows) < 1e-5


def test_multi_token_chunk_on_full_ring_breaks_and_splitting_fixes_it() -> None:
    result = demos.chunk_on_full_ring(slots=4, seen=6, chunk=3)
    assert result["slot_tokens"] == [8, 5, 6, 7]
    assert 8 in result["sees"][0]  # the first query sees a later token
    assert result["naive_error"] > 0.1
    assert result["split_error"] < 1e-6


def test_top_left_without_nonpad() -> None:
    np.testing.assert_allclose(demos.attended_keys(nonpad=False), np.eye(8)[0], atol=1e-6)
    np.testing.assert_allclose(demos.attended_keys(nonpad=True), np.full(8, 1 / 8), atol=1e-6)


def test_old_circular_formula_wraps_the_batch_index() -> None:
    past = np.zeros((3, 2), np.float32)
    update = np.array([[1], [2], [3]], np.float32)
    write = np.array([0, 2, 4])
    assert demos.scatter_spec_text_1_19(past, update, write, 1).ravel().tolist() == [3, 0, 2, 0, 0, 0]
    assert demos.scatter_fixed(past, update, write, 1).ravel().tolist() == [1, 0, 2, 0, 3, 0]


def test_openvino_rejects_tensor_scatter() -> None:
    assert "TensorScatter-24" in demos.openvino_import(cases.linear_prefill().model)
    assert demos.openvino_import(cases.attention_causal_without_nonpad_is_top_left().model) == "ok"


def test_slot_trace_shows_the_wrap() -> None:
    last = demos.slot_trace("circular", slots=4, chunks=[1] * 7).splitlines()[-1]
    assert last.split("[")[1].split() == ["t4", "t5", "t6", "t3", "]"]
