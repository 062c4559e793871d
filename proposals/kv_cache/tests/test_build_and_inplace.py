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


def _step_feeds(rng: np.random.Generator, fill: float = 0.0) -> dict[str, np.ndarray]:
    """One decode step of 2 query heads over 1 kv head: 3 cached tokens, slots 3.. hold ``fill``."""
    past = np.full((2, 1, 1, 8, 4), fill, np.float32)
    past[:, :, :, :3] = rng.standard_normal((2, 1, 1, 3, 4))
    k, v = rng.standard_normal((2, 1, 1, 1, 4)).astype(np.float32)
    q = rng.standard_normal((1, 2, 1, 4)).astype(np.float32)
    return {
        **{"q": q, "k": k, "v": v, "past_key": past[0], "past_value": past[1]},
        **{"write_indices": np.array([3]), "nonpad_kv_seqlen": np.array([4])},
    }


def test_in_place_rule_holds_for_the_cache_step_and_the_zoo_decoder_layer() -> None:
    for case in (cases.linear_decode_gqa_ragged(), cases.decoder_layer_rope_scatter_attention()):
        assert inplace.scatter_pairs(case.model) == list(inplace.CACHE_PAIRS)
        assert inplace.in_place_hazards(case.model) == []


def test_second_reader_breaks_the_rule_and_in_place_binding() -> None:
    import onnxruntime as ort

    model = build.second_reader_model(q_heads=2, kv_heads=1, max_len=8, head_dim=4)
    assert inplace.in_place_hazards(model) == ["past_key is also read by Sub 'Sub_node_3' (input 1)"]
    feeds = _step_feeds(np.random.default_rng(3))
    sess = session(model)
    plain = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    np.testing.assert_array_equal(plain["key_delta"][:, :, 3], feeds["k"][:, :, 0])  # the written row
    caches = {p: ort.OrtValue.ortvalue_from_numpy(np.array(feeds[p], copy=True)) for p, _ in inplace.CACHE_PAIRS}
    others = {n: v for n, v in feeds.items() if n not in caches}
    binding = inplace.bind_in_place(sess, caches, others, ["y", "key_delta"])
    sess.run_with_iobinding(binding)
    bound_delta = binding.get_outputs()[-1].numpy()
    np.testing.assert_array_equal(bound_delta, 0)  # the reader saw the buffer after the write
    np.testing.assert_array_equal(binding.get_outputs()[-2].numpy(), plain["y"])  # y itself is safe


def test_non_finite_unwritten_slots_poison_attention() -> None:
    # nonpad_kv_seqlen masks slots 4..7, but a masked score is added, not skipped: NaN stays.
    model = build.cache_step_model(q_heads=2, kv_heads=1, max_len=8, head_dim=4)
    for fill, finite in ((0.0, True), (1e30, True), (np.nan, False)):
        feeds = _step_feeds(np.random.default_rng(4), fill)
        for run in (ReferenceEvaluator(model).run, session(model).run):
            assert np.isfinite(run(None, feeds)[0]).all() == finite, fill


def test_capacity_repro_folder_is_what_its_writer_writes(tmp_path) -> None:
    from proposals.kv_cache import capacity_repro

    fresh = capacity_repro.write(tmp_path)
    committed = capacity_repro.REPROS / capacity_repro.SLUG
    for name in ("model.onnx", "gqa.onnx", "repro.py", "ISSUE.md"):
        assert (fresh / name).read_bytes() == (committed / name).read_bytes(), name
