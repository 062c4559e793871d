"""The float64 reference of LinearAttention-27: by hand, against onnx's own backend cases and
onnx's reference implementation on drawn inputs, stepwise against chunked, and its errors."""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx.reference.ops.op_linear_attention import LinearAttention as OnnxLinearAttention

from generator.onnx_build import seeded
from proposals.linear_attention.reference import (
    RULES,
    LinearAttentionError,
    linear_attention,
    linear_attention_chunked,
)

SLOTS = ("query", "key", "value", "past_state", "decay", "beta")
FUNCTIONS = (linear_attention, linear_attention_chunked)


def test_two_tokens_by_hand() -> None:
    # d_k = d_v = 1, one head: S = 0 -> 0.5 * (2 - 0) = 1; then S = 0.5 * 1 = 0.5,
    # u = 0.5 * (2 - 0.5) = 0.75, S = 1.25; o_t = q_t * S_t (scale 1/sqrt(1)).
    one = np.ones((1, 2, 1))
    kwargs = dict(q_num_heads=1, kv_num_heads=1, update_rule="gated_delta")
    decay = np.array([[[0.0], [math.log(0.5)]]])
    for function in FUNCTIONS:
        output, state = function(one, one, 2 * one, None, decay, 0.5 * one, **kwargs)
        np.testing.assert_allclose(output.ravel(), [1.0, 1.25])
        np.testing.assert_allclose(state.ravel(), [1.25])


def _backend_cases():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import onnx.backend.test.case.node as node_cases

        cases = node_cases.collect_testcases("LinearAttention")
    return [c for c in cases if c.model.graph.node[0].op_type == "LinearAttention"]


BACKEND_CASES = _backend_cases()


def test_onnx_ships_its_backend_cases() -> None:
    assert len(BACKEND_CASES) >= 14


@pytest.mark.parametrize("case", BACKEND_CASES, ids=[c.name for c in BACKEND_CASES])
def test_matches_onnx_backend_case(case) -> None:
    node = case.model.graph.node[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
    inputs, (output, present) = case.data_sets[0]
    given_inputs = iter(inputs)
    feeds = {slot: next(given_inputs) for slot, name in zip(SLOTS, node.input, strict=False) if name}
    tol = 5e-3 if output.dtype == np.float16 else 1e-4
    for function in FUNCTIONS:
        for chunk_size in (1, 3, 64):
            got, state = function(**feeds, **(attrs | {"chunk_size": chunk_size}))
            assert got.dtype == output.dtype and state.dtype == present.dtype
            np.testing.assert_allclose(got, output, rtol=tol, atol=tol)
            np.testing.assert_allclose(state, present, rtol=tol, atol=tol)


@st.composite
def configurations(draw):
    rule = draw(st.sampled_from(RULES))
    kv_heads, group = draw(st.integers(1, 3)), draw(st.sampled_from([1, 2, 3]))
    d_k, d_v = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    batch, seq = draw(st.integers(1, 2)), draw(st.integers(1, 9))
    rng = seeded(draw(st.integers(0, 2**16)))

    def randn(*shape):
        return rng.randn(*shape).astype(np.float32)

    feeds = {
        "query": randn(batch, seq, kv_heads * group * d_k),
        "key": randn(batch, seq, kv_heads * d_k) / math.sqrt(d_k),
        "value": randn(batch, seq, kv_heads * d_v),
        "past_state": randn(batch, kv_heads, d_k, d_v) if draw(st.booleans()) else None,
        "decay": None,
        "beta": None,
    }
    if rule in ("gated", "gated_delta"):
        width = kv_heads * draw(st.sampled_from([1, d_k]))
        feeds["decay"] = -np.abs(randn(batch, seq, width))
    if rule in ("delta", "gated_delta"):
        feeds["beta"] = rng.rand(batch, seq, draw(st.sampled_from([1, kv_heads]))).astype(np.float32)
    attrs = {"q_num_heads": kv_heads * group, "kv_num_heads": kv_heads, "update_rule": rule}
    attrs["scale"] = draw(st.sampled_from([0.0, 0.0, 0.3, -1.5]))
    attrs["chunk_size"] = draw(st.integers(1, 10))
    return feeds, attrs


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(configurations())
def test_matches_onnx_reference_and_chunked_matches_stepwise(config) -> None:
    feeds, attrs = config
    steps = linear_attention(**feeds, **attrs)
    chunks = linear_attention_chunked(**feeds, **attrs)
    onnx_ref = OnnxLinearAttention.__new__(OnnxLinearAttention)._run(*feeds.values(), **attrs)
    for ours, chunked, theirs in zip(steps, chunks, onnx_ref, strict=True):
        np.testing.assert_allclose(chunked, ours, rtol=1e-5, atol=1e-6)  # float32 outputs of float64 sums
        np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)


def _feeds(rule: str = "gated_delta", *, q=2, kv=2, d=2, batch=1, seq=3) -> dict:
    rng = seeded(0)
    feeds = {n: rng.randn(batch, seq, h * d) for n, h in (("query", q), ("key", kv), ("value", kv))}
    feeds["decay"] = -np.abs(rng.randn(batch, seq, kv)) if rule in ("gated", "gated_delta") else None
    feeds["beta"] = rng.rand(batch, seq, kv) if rule in ("delta", "gated_delta") else None
    return feeds


def test_scale_zero_means_one_over_sqrt_dk() -> None:
    kwargs = dict(q_num_heads=2, kv_num_heads=2, update_rule="gated_delta")
    default, _ = linear_attention(**_feeds(d=4), **kwargs)
    explicit, _ = linear_attention(**_feeds(d=4), **kwargs, scale=0.5)
    np.testing.assert_allclose(default, explicit)


def test_query_head_h_reads_kv_head_h_over_group() -> None:
    feeds = _feeds(q=4, kv=2)
    gqa, _ = linear_attention(**feeds, q_num_heads=4, kv_num_heads=2)
    # The same query heads against KV heads repeated in blocks (0, 0, 1, 1) as plain MHA.
    repeat = {
        n: np.repeat(feeds[n].reshape(1, 3, 2, -1), 2, axis=2).reshape(1, 3, -1)
        for n in ("key", "value", "decay", "beta")
    }
    mha, _ = linear_attention(**(feeds | repeat), q_num_heads=4, kv_num_heads=4)
    np.testing.assert_allclose(gqa, mha)


def test_present_state_after_t_tokens_is_the_state_after_the_last_one() -> None:
    feeds = _feeds(seq=5)
    kwargs = dict(q_num_heads=2, kv_num_heads=2)
    _, whole = linear_attention(**feeds, **kwargs)
    state = None
    for t in range(5):
        _, state = linear_attention(**{n: a[:, t : t + 1] for n, a in feeds.items()}, past_state=state, **kwargs)
    np.testing.assert_allclose(whole, state)


BAD = {
    "unknown rule": (dict(update_rule="mamba"), "valid: linear, gated, delta, gated_delta"),
    "missing decay": (dict(update_rule="gated", decay=None), "needs a decay input"),
    "missing beta": (dict(update_rule="delta", beta=None, decay=None), "needs a beta input"),
    "decay on linear": (dict(update_rule="linear", beta=None), "takes no decay input"),
    "heads not dividing": (dict(q_num_heads=3, kv_num_heads=2), "not a positive multiple"),
    "state shape": (dict(past_state=np.zeros((1, 2, 2, 3))), "valid: (B, H_kv, d_k, d_v) = (1, 2, 2, 2)"),
    "decay shape": (dict(decay=np.zeros((1, 3, 3))), "valid: (1, 3, 2) or (1, 3, 4)"),
    "chunk size": (dict(chunk_size=0), "valid: an integer >= 1"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_one_line_naming_what_is_valid(name: str) -> None:
    change, expected = BAD[name]
    kwargs = {"q_num_heads": 2, "kv_num_heads": 2, "update_rule": "gated_delta"}
    feeds = _feeds()
    for key, value in change.items():
        (feeds if key in SLOTS else kwargs)[key] = value
    for function in FUNCTIONS:
        with pytest.raises(LinearAttentionError) as err:
            function(**feeds, **kwargs)
        assert expected in str(err.value) and "\n" not in str(err.value)
