"""Builders produce valid models that run; IOBinding updates the cache in place."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx.reference import ReferenceEvaluator

from generator.ort import session
from proposals.kv_cache import build, cases, inplace, reference


def _check(model: onnx.ModelProto) -> None:
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, strict_mode=True, check_type=True)


@pytest.mark.parametrize(
    ("mode", "window", "opset"),
    [("linear", -1, 24), ("circular", -1, 24), ("linear", 3, 25)],
)
def test_cache_step_model_is_valid(mode: str, window: int, opset: int) -> None:
    model = build.cache_step_model(q_heads=4, kv_heads=2, max_len=8, head_dim=4, mode=mode, left_window_size=window)
    _check(model)
    assert {o.domain: o.version for o in model.opset_import} == {"": opset}
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["TensorScatter", "TensorScatter", "Attention"]
    assert [a.s for a in model.graph.node[0].attribute if a.name == "mode"] == [mode.encode()]


def test_decoder_layer_applies_rope_before_scatter() -> None:
    case = cases.decoder_layer_rope_scatter_attention()
    _check(case.model)
    producers = {out: node for node in case.model.graph.node for out in node.output}
    scatter_key = next(n for n in case.model.graph.node if n.op_type == "TensorScatter" and n.input[0] == "past_key")
    assert producers[scatter_key.input[1]].op_type == "RotaryEmbedding"
    assert [i.name for i in case.model.graph.input] == [
        "hidden_states",
        "position_ids",
        "past_key",
        "past_value",
        "write_indices",
        "nonpad_kv_seqlen",
    ]
    assert [o.name for o in case.model.graph.output] == ["output", "present_key", "present_value"]


def test_one_linear_graph_serves_prefill_and_decode_on_both_runtimes() -> None:
    case = cases.linear_prefill_then_decode()
    runners = {
        "reference": ReferenceEvaluator(case.model).run,
        "onnxruntime": session(case.model).run,
    }
    for name, run in runners.items():
        past = None
        for ds in case.datasets:
            feeds = dict(ds.inputs)
            if past is not None:  # chain the runtime's own present cache, not ours
                feeds["past_key"], feeds["past_value"] = past
            y, key, value = run(None, feeds)
            np.testing.assert_allclose(y, ds.outputs["y"], rtol=1e-5, atol=1e-5, err_msg=name)  # float32 vs float64
            np.testing.assert_array_equal(key, ds.outputs["present_key"])
            past = key, value


def test_iobinding_updates_cache_in_place_and_plain_run_copies() -> None:
    case = cases.linear_decode_gqa_ragged()
    evidence = inplace.in_place_evidence(session(case.model), case.datasets[0].inputs)
    assert evidence.binding_in_place
    assert evidence.plain_copies
    assert evidence.outputs_equal


def test_bound_numpy_cache_sees_the_new_token() -> None:
    import onnxruntime as ort

    case = cases.linear_decode_gqa_ragged()
    ds = case.datasets[0]
    sess = session(case.model)
    arrays = {p: np.array(ds.inputs[p], copy=True) for p, _ in inplace.CACHE_PAIRS}
    caches = {p: ort.OrtValue.ortvalue_from_numpy(a) for p, a in arrays.items()}
    feeds = {n: v for n, v in ds.inputs.items() if n not in caches}
    sess.run_with_iobinding(inplace.bind_in_place(sess, caches, feeds, ["y"]))
    np.testing.assert_array_equal(arrays["past_key"], ds.outputs["present_key"])


def test_circular_driver_rejects_multi_token_chunks() -> None:
    zeros = np.zeros((1, 1, 4, 2), np.float32)
    chunk = np.zeros((1, 1, 2, 2), np.float32)
    with pytest.raises(ValueError, match="one token"):
        reference.circular_step(zeros, zeros, np.array([3]), chunk, chunk, chunk)
