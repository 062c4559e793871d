"""Paged attention: zoo cases vs the numpy reference and vs the contiguous linear buffer,
the linear->paged rewrite, and the pitfalls shown on the page."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from generator.errors import UsageError
from generator.ort import session
from generator.registry import select
from generator.runtimes import OnnxRuntime, ReferenceRuntime
from generator.verify import compare
from proposals.kv_cache.build import cache_step_model
from proposals.paged_attention import pitfalls
from proposals.paged_attention.blocks import BlockAllocator, plan_step
from proposals.paged_attention.build import PagedShape, paged_model
from proposals.paged_attention.reference import attend, paged_attention
from proposals.paged_attention.rewrite import to_paged
from proposals.paged_attention.streams import contiguous_outputs, run_both

CASES = select(["paged_attention"])


def test_at_least_five_cases():
    assert len(CASES) >= 5


@pytest.mark.parametrize("spec", CASES, ids=lambda s: s.name)
def test_case_runs_on_ort_and_reference_evaluator(spec):
    built = spec.build()
    onnx.checker.check_model(built.model, full_check=True)
    for runtime in (OnnxRuntime(), ReferenceRuntime()):
        run = runtime.load_model(built.model)
        for data in built.datasets:
            ok, _, problem = compare(run(data.inputs), data.outputs, rtol=1e-5, atol=1e-6)
            assert ok, f"{runtime.name}: {problem}"


PAGED_STEP_CASES = [s for s in CASES if s.name != "paged_rewritten_decoder_layer"]


@pytest.mark.parametrize("engine", ["kv_reference", "onnxruntime"])
@pytest.mark.parametrize("spec", PAGED_STEP_CASES, ids=lambda s: s.name)
def test_case_equals_contiguous_linear_buffer(spec, engine):
    """Same tokens through the KV proposal's linear buffer (its numpy reference, and
    TensorScatter + Attention-24 on ORT) on a per-sequence contiguous cache."""
    for data in spec.build().datasets:
        linear = contiguous_outputs(dict(data.inputs), engine)
        np.testing.assert_allclose(linear, data.outputs["output"], rtol=1e-5, atol=1e-6)


def test_rewrite_of_the_kv_cache_decoder_layer_case_is_identical():
    """The kv_cache zoo case's own model, rewritten, on a 5-step token stream."""
    (kv_case,) = select(["kv_cache/decoder_layer_rope_scatter_attention"])
    linear = kv_case.build().model
    paged = to_paged(linear, num_blocks=8, block_size=2)
    onnx.checker.check_model(paged, full_check=True)

    def tokens(rng, batch, past, q_len):
        return {
            "hidden_states": rng.randn(batch, q_len, 16).astype(np.float32),
            "position_ids": np.tile(past + np.arange(q_len), (batch, 1)).astype(np.int64),
        }

    diffs = run_both(linear, paged, tokens, batch=2, chunks=[3, 1, 1, 2, 1], num_blocks=8, block_size=2)
    assert [(d.output, d.cache) for d in diffs] == [(0.0, 0.0)] * 5


def test_reference_equals_dense_attention_for_one_sequence():
    rng = np.random.RandomState(0)
    q, k, v = rng.randn(3, 2, 4), rng.randn(7, 2, 4), rng.randn(7, 2, 4)
    scores = np.einsum("qhd,khd->hqk", q, k) / 2.0
    scores += np.triu(np.full((3, 7), -np.inf), k=5)  # query i sees keys <= 4 + i
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    dense = np.einsum("hqk,khd->qhd", weights / weights.sum(-1, keepdims=True), v)
    np.testing.assert_allclose(attend(q, k, v, offset=4, scale=0.5, is_causal=True), dense)


def test_reference_skips_negative_slots_and_ignores_unused_table_entries():
    shape = PagedShape(num_blocks=3, block_size=2, q_heads=1, kv_heads=1, head_dim=2)
    cache = np.arange(12, dtype=np.float32).reshape(shape.cache_shape)
    new = np.full((2, 2), 50.0, dtype=np.float32)
    result = paged_attention(
        new,
        new,
        new,
        cache,
        cache,
        np.array([0, 1]),
        np.array([3]),
        np.array([[2, 0, -1]]),
        np.array([4, -1]),
    )
    assert result.key_cache[2, 0, 0].tolist() == [50.0, 50.0]  # slot 4 = block 2, offset 0
    np.testing.assert_array_equal(
        np.delete(result.key_cache.ravel(), [8, 9]), np.delete(cache.ravel(), [8, 9])
    )  # -1 wrote nothing


def test_function_op_skips_negative_slot_instead_of_wrapping():
    shape = PagedShape(num_blocks=2, block_size=2, q_heads=1, kv_heads=1, head_dim=2)
    cache = np.ones(shape.cache_shape, dtype=np.float32)
    token = np.full((2, 2), 9.0, dtype=np.float32)
    feeds = {
        "query": token,
        "key": token,
        "value": token,
        "key_cache": cache,
        "value_cache": cache,
        "cu_seqlens_q": np.array([0, 1]),
        "seq_lens": np.array([1]),
        "block_table": np.array([[0]]),
        "slot_mapping": np.array([0, -1]),
    }
    y, k_out, _ = session(paged_model(shape)).run(None, feeds)
    assert k_out[1, 1, 0].tolist() == [1.0, 1.0]  # the pool's last slot is untouched
    assert y[1].tolist() == [0.0, 0.0]  # the padding token's row is 0


def test_onnx_inliner_drops_function_attribute_defaults():
    """Why paged_model spells out every attribute: if this starts failing, onnx fixed it."""
    shape = PagedShape(num_blocks=2, block_size=2, q_heads=1, kv_heads=1, head_dim=2)
    model = paged_model(shape, inline=False)
    del model.graph.node[0].attribute[:]
    model.graph.node[0].attribute.append(helper.make_attribute("scale", 1.0))
    flat = onnx.inliner.inline_local_functions(model)
    attention = next(n for n in flat.graph.node if n.op_type == "Attention")
    assert "is_causal" not in {a.name for a in attention.attribute}


def _stream_tokens(rng, batch, past, q_len):
    def draw(heads):
        return rng.randn(batch, heads, q_len, 8).astype(np.float32)

    return {"q": draw(4), "k": draw(2), "v": draw(2)}


@pytest.mark.parametrize("runner", ["onnxruntime", "reference"])
def test_rewrite_gives_identical_outputs_on_a_token_stream(runner):
    linear = cache_step_model(q_heads=4, kv_heads=2, max_len=16, head_dim=8)
    paged = to_paged(linear, num_blocks=12, block_size=4)
    onnx.checker.check_model(paged, full_check=True)
    run = None if runner == "onnxruntime" else (lambda m: ReferenceEvaluator(m).run)
    diffs = run_both(
        linear,
        paged,
        _stream_tokens,
        batch=2,
        chunks=[5, 1, 1, 3, 1],
        num_blocks=12,
        block_size=4,
        run=run,
    )
    assert [d.cache for d in diffs] == [0.0] * 5
    assert max(d.output for d in diffs) <= (0.0 if runner == "onnxruntime" else 1e-6)


def test_rewrite_signature_follows_openvino_naming():
    paged = to_paged(cache_step_model(q_heads=4, kv_heads=2, max_len=16, head_dim=8), num_blocks=12, block_size=4)
    assert [i.name for i in paged.graph.input] == [
        "q",
        "k",
        "v",
        "key_cache.0",
        "value_cache.0",
        "nonpad_kv_seqlen",
        "block_table",
        "slot_mapping",
    ]
    assert [o.name for o in paged.graph.output] == [
        "y",
        "key_cache_out.0",
        "value_cache_out.0",
    ]


def test_rewrite_rejects_models_outside_the_pattern():
    linear = cache_step_model(q_heads=4, kv_heads=2, max_len=16, head_dim=8)
    circular = cache_step_model(q_heads=4, kv_heads=2, max_len=16, head_dim=8, mode="circular")
    with pytest.raises(UsageError, match="circular"):
        to_paged(circular, 12, 4)
    no_lengths = onnx.ModelProto()
    no_lengths.CopyFrom(linear)
    del no_lengths.graph.node[2].input[6:]
    with pytest.raises(UsageError, match="nonpad_kv_seqlen"):
        to_paged(no_lengths, 12, 4)
    with pytest.raises(UsageError, match="block_size"):
        to_paged(linear, 12, 0)


def test_plan_step_rejects_a_short_block_list():
    with pytest.raises(UsageError, match="needs 2 blocks"):
        plan_step([[3]], [4], [1], block_size=4)


def test_allocator_hands_out_scattered_blocks_and_reports_a_full_pool():
    pool = BlockAllocator(num_blocks=4, block_size=2, seed=0)
    blocks = pool.reserve(0, 8)
    assert sorted(blocks) == [0, 1, 2, 3] and blocks != [0, 1, 2, 3]
    with pytest.raises(UsageError, match="full"):
        pool.reserve(1, 1)


def test_negative_indices_wrap_on_every_runtime():
    for values in pitfalls.negative_slot_wraps().values():
        assert values[-1] == 99.0  # "skip" became "write the pool's last slot"
    for values in pitfalls.negative_block_wraps().values():
        assert values == [0.0, 20.0]  # "unmapped" became "the last block"


def test_duplicate_slots_reference_is_last_wins():
    assert pitfalls.duplicate_slots(tokens=8, width=16)["reference"] == [7.0]


def test_right_padding_breaks_bottom_right_causal_alignment():
    errors = pitfalls.padding_side()
    assert errors["right"] > 0.1 and errors["left"] < 1e-6


@pytest.mark.parametrize("layout", ["nhd", "flat", "head_major", "whole_pool"])
@pytest.mark.parametrize("factor", [1, 3])
def test_bench_arrangements_match_the_reference(layout, factor):
    from proposals.paged_attention.bench import layout_feeds
    from proposals.paged_attention.bench_models import (
        DecodeShape,
        paged_decode_model,
        paged_step_feeds,
        widen_pool,
    )

    shape = DecodeShape(batch=1, context=37, block_size=8, q_heads=4, kv_heads=2, head_dim=8)
    nhd = paged_step_feeds(shape, "nhd")
    nhd = widen_pool(nhd, factor) if factor > 1 else nhd
    sized = DecodeShape(**{**shape.__dict__, "pool_blocks": nhd["key_cache"].shape[0]})
    ref = paged_attention(
        nhd["query"].reshape(1, -1),
        nhd["key"],
        nhd["value"],
        nhd["key_cache"],
        nhd["value_cache"],
        np.array([0, 1]),
        nhd["seq_lens"],
        nhd["block_table"],
        nhd["slot_mapping"],
    )
    y, key_out, _ = session(paged_decode_model(sized, layout)).run(None, layout_feeds(nhd, sized, layout))
    np.testing.assert_allclose(y.reshape(1, -1), ref.y, rtol=1e-5, atol=1e-6)
    if layout in ("head_major", "whole_pool"):
        key_out = key_out.transpose(1, 2, 0, 3)
    np.testing.assert_array_equal(key_out.reshape(ref.key_cache.shape), ref.key_cache)


def test_whole_pool_arrangement_is_batch_one_only():
    from proposals.paged_attention.bench_models import DecodeShape, paged_decode_model

    with pytest.raises(UsageError, match="batch-1"):
        paged_decode_model(DecodeShape(2, 16, 8, 2, 2, 4), "whole_pool")
    with pytest.raises(UsageError, match="unknown pool layout"):
        paged_decode_model(DecodeShape(1, 16, 8, 2, 2, 4), "hnd")


# The KV proposal's builders (proposals.kv_cache.build) make head-major 4-D caches
# [B, Hkv, L, D] only, and this is the one sequence-major layout the rewrite also accepts:
# Attention-24's 3-D form, where the cache's sequence axis is already axis 1 and the
# rewrite needs no Transpose. So this variant stays here rather than in the KV proposal.
def _linear_3d_model(max_len: int) -> onnx.ModelProto:
    """TensorScatter on [B, L, Hkv*D] caches (axis 1) feeding a 3-D Attention-24."""
    from onnx import TensorProto

    from generator.onnx_build import make_model

    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    cache = ["batch", max_len, 16]
    inputs = [
        helper.make_tensor_value_info("query", f32, ["batch", "q_len", 32]),
        helper.make_tensor_value_info("key", f32, ["batch", "q_len", 16]),
        helper.make_tensor_value_info("value", f32, ["batch", "q_len", 16]),
        helper.make_tensor_value_info("past_key", f32, cache),
        helper.make_tensor_value_info("past_value", f32, cache),
        helper.make_tensor_value_info("write_indices", i64, ["batch"]),
        helper.make_tensor_value_info("nonpad_kv_seqlen", i64, ["batch"]),
    ]
    outputs = [
        helper.make_tensor_value_info("output", f32, ["batch", "q_len", 32]),
        helper.make_tensor_value_info("present_key", f32, cache),
        helper.make_tensor_value_info("present_value", f32, cache),
    ]
    nodes = [
        helper.make_node("TensorScatter", ["past_key", "key", "write_indices"], ["present_key"], axis=1),
        helper.make_node("TensorScatter", ["past_value", "value", "write_indices"], ["present_value"], axis=1),
        helper.make_node(
            "Attention",
            ["query", "present_key", "present_value", "", "", "", "nonpad_kv_seqlen"],
            ["output"],
            is_causal=1,
            q_num_heads=4,
            kv_num_heads=2,
        ),
    ]
    return make_model(helper.make_graph(nodes, "linear_3d", inputs, outputs), {"": 24})


def test_rewrite_handles_a_sequence_major_3d_cache():
    linear = _linear_3d_model(max_len=12)
    paged = to_paged(linear, num_blocks=8, block_size=4)
    assert "Transpose" not in {n.op_type for n in paged.graph.node}
    assert [d.dim_value for d in paged.graph.input[3].type.tensor_type.shape.dim] == [8, 4, 16]

    def tokens(rng, batch, past, q_len):
        return {
            "query": rng.randn(batch, q_len, 32).astype(np.float32),
            "key": rng.randn(batch, q_len, 16).astype(np.float32),
            "value": rng.randn(batch, q_len, 16).astype(np.float32),
        }

    diffs = run_both(linear, paged, tokens, batch=2, chunks=[4, 1, 3, 1], num_blocks=8, block_size=4)
    assert max(d.output for d in diffs) == 0.0 and max(d.cache for d in diffs) == 0.0
