"""The numpy reference against onnx.reference (onnx 1.23.2) over many random configs."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper
from onnx.reference import ReferenceEvaluator

from generator.onnx_build import make_model, seeded, tensor_info
from proposals.kv_cache import reference as ref


def _run_node(node, feeds: dict[str, np.ndarray], opset: int) -> list[np.ndarray]:
    graph = helper.make_graph(
        [node],
        "one_node",
        [tensor_info(name, value) for name, value in feeds.items()],
        [helper.make_value_info(name, helper.TypeProto()) for name in node.output],
    )
    model = make_model(graph, {"": opset})
    return ReferenceEvaluator(model).run(None, feeds)


@pytest.mark.parametrize("seed", range(40))
def test_tensor_scatter_matches_onnx_reference(seed: int) -> None:
    rng = seeded(seed)
    rank = rng.randint(2, 5)
    shape = [int(d) for d in rng.randint(1, 5, size=rank)]
    axis = int(rng.randint(1, rank))
    mode = ["linear", "circular"][seed % 2]
    max_len = shape[axis]
    seq = int(rng.randint(1, max_len + 1))
    update_shape = list(shape)
    update_shape[axis] = seq
    high = max_len - seq + 1 if mode == "linear" else 3 * max_len
    feeds = {
        "past": rng.randn(*shape).astype(np.float32),
        "update": rng.randn(*update_shape).astype(np.float32),
        "write": rng.randint(0, high, size=shape[0]).astype(np.int64),
    }
    node_axis = axis - rank if seed % 3 == 0 else axis  # negative axes too
    node = helper.make_node("TensorScatter", list(feeds), ["out"], axis=node_axis, mode=mode)
    (expected,) = _run_node(node, feeds, 24)
    got = ref.tensor_scatter(feeds["past"], feeds["update"], feeds["write"], axis=axis, mode=mode)
    np.testing.assert_array_equal(got, expected)


def test_tensor_scatter_circular_wraps_only_the_sequence_index() -> None:
    past = np.zeros((3, 2), np.float32)
    update = np.array([[1], [2], [3]], np.float32)
    got = ref.tensor_scatter(past, update, np.array([0, 2, 4]), axis=1, mode="circular")
    np.testing.assert_array_equal(got.ravel(), [1, 0, 2, 0, 3, 0])


def _attention_config(rng: np.random.RandomState, seed: int) -> tuple[dict, dict, int]:
    """Random Attention inputs and attributes covering the reference's branches."""
    batch, kv_heads = int(rng.randint(1, 3)), int(rng.randint(1, 3))
    q_heads = kv_heads * int(rng.randint(1, 4))
    head = int(rng.choice([2, 4, 8]))
    kv_len = int(rng.randint(1, 9))
    q_len = int(rng.randint(1, kv_len + 1))
    feeds = {
        "Q": rng.randn(batch, q_heads, q_len, head).astype(np.float32),
        "K": rng.randn(batch, kv_heads, kv_len, head).astype(np.float32),
        "V": rng.randn(batch, kv_heads, kv_len, head).astype(np.float32),
    }
    attrs: dict = {"is_causal": int(rng.rand() < 0.7)}
    use_past = seed % 5 == 0
    if use_past:
        past = int(rng.randint(1, 5))
        feeds["past_key"] = rng.randn(batch, kv_heads, past, head).astype(np.float32)
        feeds["past_value"] = rng.randn(batch, kv_heads, past, head).astype(np.float32)
    total = kv_len + (feeds["past_key"].shape[2] if use_past else 0)
    nonpad = None
    if not use_past and rng.rand() < 0.7:
        nonpad = rng.randint(max(1, q_len - 1), kv_len + 1, size=batch).astype(np.int64)
        feeds["nonpad_kv_seqlen"] = nonpad
    mask_kind = rng.choice(["none", "bool", "float"])
    if mask_kind != "none":
        need = int(nonpad.max()) if nonpad is not None else total
        length = int(rng.randint(need, total + 1)) if nonpad is not None else total
        length = max(length, need)
        shape = (batch, 1, q_len, length) if rng.rand() < 0.5 else (q_len, length)
        if mask_kind == "bool":
            feeds["attn_mask"] = rng.rand(*shape) < 0.8
        else:
            feeds["attn_mask"] = rng.randn(*shape).astype(np.float32)
    if rng.rand() < 0.3:
        attrs["scale"] = float(rng.uniform(0.1, 1.0))
    if rng.rand() < 0.3:
        attrs["softcap"] = float(rng.uniform(1.0, 3.0))
    opset = 24
    if rng.rand() < 0.5:
        opset = 25
        attrs["left_window_size"] = int(rng.randint(-1, 4))
        attrs["right_window_size"] = 0 if attrs["is_causal"] else int(rng.randint(-1, 3))
    return feeds, attrs, opset


@pytest.mark.parametrize("seed", range(60))
def test_attention_matches_onnx_reference(seed: int) -> None:
    rng = seeded(1000 + seed)
    feeds, attrs, opset = _attention_config(rng, seed)
    order = ["Q", "K", "V", "attn_mask", "past_key", "past_value", "nonpad_kv_seqlen"]
    inputs = [name if name in feeds else "" for name in order]
    while inputs[-1] == "":
        inputs.pop()
    node = helper.make_node("Attention", inputs, ["Y"], **attrs)
    (expected,) = _run_node(node, feeds, opset)[:1]
    got = ref.attention(
        feeds["Q"],
        feeds["K"],
        feeds["V"],
        feeds.get("attn_mask"),
        feeds.get("past_key"),
        feeds.get("past_value"),
        feeds.get("nonpad_kv_seqlen"),
        **attrs,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_fully_masked_row_is_zero() -> None:
    q = np.ones((1, 1, 3, 2), np.float32)
    kv = np.ones((1, 1, 4, 2), np.float32)
    # nonpad 1 < q_len 3: offset -2, rows 0 and 1 see no key at all.
    y = ref.attention(q, kv, kv, nonpad_kv_seqlen=np.array([1]), is_causal=True)
    np.testing.assert_array_equal(y[0, 0, :2], 0)
    np.testing.assert_allclose(y[0, 0, 2], 1)


@pytest.mark.parametrize("seed", range(20))
def test_rotary_embedding_matches_onnx_reference(seed: int) -> None:
    rng = seeded(2000 + seed)
    batch, heads, seq = int(rng.randint(1, 3)), int(rng.randint(1, 4)), int(rng.randint(1, 5))
    head = int(rng.choice([4, 8]))
    rot = int(rng.choice([0, head // 2, head])) if head >= 8 else 0
    half = (rot or head) // 2
    interleaved = int(seed % 2)
    cos = rng.randn(10, half).astype(np.float32)
    sin = rng.randn(10, half).astype(np.float32)
    feeds = {
        "X": rng.randn(batch, heads, seq, head).astype(np.float32),
        "cos": cos,
        "sin": sin,
        "pos": rng.randint(0, 10, size=(batch, seq)).astype(np.int64),
    }
    three_d = seed % 3 == 0
    attrs = {"interleaved": interleaved, "rotary_embedding_dim": rot}
    if three_d:
        feeds["X"] = feeds["X"].transpose(0, 2, 1, 3).reshape(batch, seq, heads * head)
        attrs["num_heads"] = heads
    node = helper.make_node("RotaryEmbedding", list(feeds), ["Y"], **attrs)
    (expected,) = _run_node(node, feeds, 23)
    got = ref.rotary_embedding(feeds["X"], cos, sin, feeds["pos"], **attrs)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_circular_decode_equals_sliding_window_over_full_cache() -> None:
    rng = seeded(7)
    slots, steps, heads, head = 3, 7, 2, 4
    tokens = [tuple(rng.randn(1, heads, 1, head).astype(np.float32) for _ in range(3)) for _ in range(steps)]
    ring = ref.run_circular(tokens, *(np.zeros((1, heads, slots, head), np.float32),) * 2)
    full_k = np.concatenate([k for _, k, _ in tokens], axis=2)
    full_v = np.concatenate([v for _, _, v in tokens], axis=2)
    for t, ((q, _, _), step) in enumerate(zip(tokens, ring, strict=True)):
        windowed = ref.attention(
            q,
            full_k,
            full_v,
            nonpad_kv_seqlen=np.array([t + 1]),
            is_causal=True,
            left_window_size=slots - 1,
        )
        np.testing.assert_allclose(step.y, windowed, rtol=1e-6, atol=1e-6)
