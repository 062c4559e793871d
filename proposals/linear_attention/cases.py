"""Zoo cases of the linear-attention proposal: LinearAttention-27 with its state carried as a
graph input and output.

Every expected output comes from :mod:`proposals.linear_attention.reference` (numpy float64,
written from the schema text). Cases with several data sets are sequences: each set's
``past_state`` is the previous set's ``present_state``, as a decoder carries it.
"""

from __future__ import annotations

import numpy as np

from generator.onnx_build import seeded
from generator.registry import Case, DataSet, case
from proposals.linear_attention.build import Layout, linear_attention_model
from proposals.linear_attention.reference import linear_attention

# float32 engines against the float64 reference: a few ulps of the output's magnitude.
RTOL = 1e-4
ATOL = 1e-5


def _inputs(rng: np.random.RandomState, layout: Layout, batch: int, seq: int) -> dict[str, np.ndarray]:
    """Random packed q/k/v and the gates the rule reads: keys L2-normalised per head (as
    the schema asks of the delta rules), log-decays <= 0, rates in (0, 1)."""

    def randn(width: int) -> np.ndarray:
        return rng.randn(batch, seq, width).astype(np.float32)

    key = randn(layout.kv_heads * layout.d_k).reshape(batch, seq, layout.kv_heads, layout.d_k)
    key /= np.linalg.norm(key, axis=-1, keepdims=True)
    feeds = {
        "query": randn(layout.q_heads * layout.d_k),
        "key": key.reshape(batch, seq, layout.kv_heads * layout.d_k),
        "value": randn(layout.kv_heads * layout.d_v),
    }
    if layout.decay_width:
        feeds["decay"] = (-0.3 * np.abs(randn(layout.decay_width))).astype(np.float32)
    if layout.beta_width:
        feeds["beta"] = rng.uniform(0.05, 0.95, (batch, seq, layout.beta_width)).astype(np.float32)
    return feeds


def _sequence(
    layout: Layout, chunks: list[int], *, batch: int, seed: int, past: np.ndarray | None = None
) -> list[DataSet]:
    """One data set per chunk of tokens, each starting from the previous one's state."""
    rng = seeded(seed)
    shape = (batch, layout.kv_heads, layout.d_k, layout.d_v)
    state = np.zeros(shape, np.float32) if past is None else past
    datasets = []
    for seq in chunks:
        feeds = _inputs(rng, layout, batch, seq)
        if layout.past_state:
            feeds = {"past_state": state, **feeds}
        output, present = linear_attention(
            feeds["query"],
            feeds["key"],
            feeds["value"],
            feeds.get("past_state"),
            feeds.get("decay"),
            feeds.get("beta"),
            **layout.attributes(),
        )
        order = ["query", "key", "value", "past_state", "decay", "beta"]
        datasets.append(
            DataSet({n: feeds[n] for n in order if n in feeds}, {"output": output, "present_state": present})
        )
        state = present
    return datasets


def _case(layout: Layout, chunks: list[int], *, batch: int = 2, seed: int, past: bool = False) -> Case:
    start = None
    if past:  # a state left by earlier tokens, of the magnitude a decoder's state reaches
        start = (0.3 * seeded(1000 + seed).randn(batch, layout.kv_heads, layout.d_k, layout.d_v)).astype(np.float32)
    datasets = _sequence(layout, chunks, batch=batch, seed=seed, past=start)
    return Case(linear_attention_model(layout), datasets, rtol=RTOL, atol=ATOL)


@case
def linear_prefill() -> Case:
    """Rule linear (no decay, no beta): 5 prompt tokens from a zero state, B=2, 2 heads, d=4."""
    return _case(Layout("linear", q_heads=2, kv_heads=2, d_k=4, d_v=4), [5], seed=0)


@case
def gated_per_head_decay() -> Case:
    """Rule gated, one log-decay per head (B, T, H_kv), RetNet/Mamba-2 style, from a past state."""
    return _case(Layout("gated", q_heads=2, kv_heads=2, d_k=4, d_v=4, decay="head"), [4], seed=1, past=True)


@case
def gated_per_key_decay() -> Case:
    """Rule gated, one log-decay per key dimension (B, T, H_kv*d_k), GLA style, from a past state."""
    return _case(Layout("gated", q_heads=2, kv_heads=2, d_k=4, d_v=4, decay="key"), [4], seed=2, past=True)


@case
def delta_rule() -> Case:
    """Rule delta (DeltaNet): L2-normalised keys, one rate per head, from a past state."""
    return _case(Layout("delta", q_heads=2, kv_heads=2, d_k=4, d_v=4), [5], seed=3, past=True)


@case
def gated_delta_prefill_then_decode() -> Case:
    """Rule gated_delta: prefill 6 tokens (set 0), then 3 decode steps on the carried state."""
    layout = Layout("gated_delta", q_heads=2, kv_heads=2, d_k=4, d_v=4)
    return _case(layout, [6, 1, 1, 1], seed=4)


@case
def gated_delta_gqa() -> Case:
    """Rule gated_delta, GQA 4:2: query heads 0-1 read KV head 0, heads 2-3 read KV head 1."""
    layout = Layout("gated_delta", q_heads=4, kv_heads=2, d_k=4, d_v=4)
    return _case(layout, [3, 1], seed=5, past=True)


@case
def gated_delta_mqa_batch3() -> Case:
    """Rule gated_delta, MQA 4:1, batch 3, one rate shared by every head (beta (B, T, 1))."""
    layout = Layout("gated_delta", q_heads=4, kv_heads=1, d_k=4, d_v=4, beta="shared")
    return _case(layout, [3, 1], batch=3, seed=6, past=True)


@case
def gated_delta_per_key_decay() -> Case:
    """Rule gated_delta with a per-key-dimension decay (Kimi Delta Attention's form)."""
    layout = Layout("gated_delta", q_heads=2, kv_heads=2, d_k=4, d_v=4, decay="key")
    return _case(layout, [5, 1], seed=7, past=True)


@case
def chunk_size_not_dividing_t() -> Case:
    """chunk_size=4 with T=7 (a short last chunk): the output must equal the token-by-token one."""
    layout = Layout("gated_delta", q_heads=2, kv_heads=2, d_k=4, d_v=4, chunk_size=4)
    return _case(layout, [7, 1], seed=8, past=True)


@case
def chunk_size_larger_than_t() -> Case:
    """chunk_size=64 (the default, written out) with T=3: one short chunk, delta rule."""
    layout = Layout("delta", q_heads=2, kv_heads=2, d_k=4, d_v=4, chunk_size=64)
    return _case(layout, [3], seed=9, past=True)


@case
def value_head_size_differs() -> Case:
    """d_k=4, d_v=6: the state is (B, H_kv, 4, 6), the output (B, T, H_q*6)."""
    layout = Layout("gated_delta", q_heads=2, kv_heads=2, d_k=4, d_v=6)
    return _case(layout, [4, 1], seed=10, past=True)


@case
def explicit_scale() -> Case:
    """scale=0.5 written out (the default 0.0 means 1/sqrt(d_k)); rule gated."""
    layout = Layout("gated", q_heads=2, kv_heads=1, d_k=4, d_v=4, scale=0.5)
    return _case(layout, [3, 1], seed=11, past=True)


@case
def no_past_state() -> Case:
    """past_state omitted: the state starts at zero; present_state is the state after the last token."""
    layout = Layout("gated_delta", q_heads=2, kv_heads=2, d_k=4, d_v=4, past_state=False)
    return _case(layout, [4], seed=12)


@case
def chunked_prefill_equals_one_prefill() -> Case:
    """Prefill 9 tokens as 4 + 3 + 2 (state carried), then 1 decode: same as one 9-token prefill."""
    layout = Layout("gated_delta", q_heads=4, kv_heads=2, d_k=4, d_v=4, decay="key", chunk_size=2)
    return _case(layout, [4, 3, 2, 1], seed=13)


@case
def empty_sequence_keeps_state() -> Case:
    """T = 0 (no new token): the output is empty and present_state equals past_state."""
    layout = Layout("gated_delta", q_heads=2, kv_heads=2, d_k=4, d_v=4)
    built = _case(layout, [0], seed=14, past=True)
    # onnxruntime 1.32 runs the op's function body; the title of repros/onnx-linearattention-body-empty-sequence
    reason = "LinearAttention-27's function body fails on an empty sequence (T = 0): Reshape with -1 of a size-0 tensor"
    return Case(built.model, built.datasets, rtol=RTOL, atol=ATOL, divergences={"onnxruntime": reason})


@case
def qwen3_5_gated_delta_layer() -> Case:
    """A tiny seeded Qwen3.5 linear-attention layer (Conv + LinearAttention + gated RMSNorm), prefill 5 then decode 2;
    expected outputs and states from transformers' module and cache in float64."""
    from proposals.linear_attention import hf, survey

    weights = hf.gated_delta_weights(survey.tiny_mixer("qwen3_5"))
    hidden = seeded(20).randn(2, 7, weights.w_q.shape[0]).astype(np.float32)
    chunks = [5, 1, 1]
    states = hf.zero_states(weights, batch=2)
    datasets, start = [], 0
    for length, (output, conv, state) in zip(chunks, survey.module_steps("qwen3_5", hidden, chunks), strict=True):
        expected = {"output": output, "present_conv": conv, "present_state": state}
        expected = {name: value.astype(np.float32) for name, value in expected.items()}
        datasets.append(DataSet({"hidden_states": hidden[:, start : start + length], **states}, expected))
        states = {"past_conv": expected["present_conv"], "past_state": expected["present_state"]}
        start += length
    return Case(hf.mixer_model(weights), datasets, rtol=RTOL, atol=ATOL)
