"""Three pitfalls of the standard-op form, each shown by running a tiny model.

1. A -1 "skip" slot or "unmapped" block wraps: ONNX ScatterND and Gather count
   negative indices from the end.
2. Duplicate ScatterND indices are undefined with reduction="none"; runtimes differ.
3. Attention-24 has one query length per batch: a mixed batch needs its queries
   left-padded (or a mask), since the causal mask is bottom-right aligned.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir

from generator.onnx_build import builder_model, graph_builder
from generator.ort import session
from generator.runtimes import OnnxRuntime, OpenVinoRuntime, ReferenceRuntime, Runtime
from generator.verify import first_line
from proposals.paged_attention.reference import attend

OPSET = 24


def _single_node(op_type: str, inputs: dict[str, np.ndarray], **attrs) -> onnx.ModelProto:
    """One ``op_type`` node over graph inputs shaped like ``inputs``; its output is ``y``."""
    b = graph_builder(op_type.lower(), {"": OPSET})
    args = [b.input(name, ir.DataType.from_numpy(a.dtype), list(a.shape)) for name, a in inputs.items()]
    b.add_output(getattr(b.op, op_type)(*args, **attrs), "y")
    return builder_model(b)


def runtimes() -> list[Runtime]:
    """The matrix's runtimes (OpenVINO compiled in f32, as the verifier does). The
    ``openvino-inlined`` column is left out: these single-op models have no functions."""
    return [ReferenceRuntime(), OnnxRuntime(), OpenVinoRuntime()]


def negative_slot_wraps() -> dict[str, list[float]]:
    """ScatterND of a token with slot -1 into a 6-slot pool (rows = slot numbers)."""
    pool = np.arange(6, dtype=np.float32).reshape(6, 1)
    feeds = {
        "pool": pool,
        "slots": np.array([[-1]], dtype=np.int64),  # vLLM/ORT: -1 = "do not write"
        "token": np.array([[99.0]], dtype=np.float32),
    }
    model = _single_node("ScatterND", feeds)
    return {rt.name: rt.load_model(model)(feeds)["y"].ravel().tolist() for rt in runtimes()}


def negative_block_wraps() -> dict[str, list[float]]:
    """Gather of block-table entry -1 ("unmapped" in ORT) from a 3-block pool."""
    feeds = {
        "pool": np.array([[0.0], [10.0], [20.0]], dtype=np.float32),
        "table": np.array([0, -1], dtype=np.int64),
    }
    model = _single_node("Gather", feeds, axis=0)
    return {rt.name: rt.load_model(model)(feeds)["y"].ravel().tolist() for rt in runtimes()}


def duplicate_slots(tokens: int = 64, width: int = 4096) -> dict[str, list[float] | str]:
    """``tokens`` rows all written to slot 1 (token i carries value i): the values that
    end up in slot 1, per runtime. Last-wins would leave only ``tokens - 1``."""
    feeds = {
        "pool": np.zeros((4, width), dtype=np.float32),
        "slots": np.ones((tokens, 1), dtype=np.int64),
        "tokens": np.repeat(np.arange(tokens, dtype=np.float32)[:, None], width, axis=1),
    }
    model = _single_node("ScatterND", feeds)
    results: dict[str, list[float] | str] = {}
    for rt in runtimes():
        try:
            results[rt.name] = np.unique(rt.load_model(model)(feeds)["y"][1]).tolist()
        except Exception as err:  # noqa: BLE001 - a runtime may reject duplicates: that is data too
            results[rt.name] = f"error: {first_line(err)[:80]}"
    return results


def padding_side(seed: int = 0) -> dict[str, float]:
    """Max error of the short sequence's query rows with right vs left padding.

    Batch of 2 over an 8-token cache: sequence 0 has 1 new query token (past 7),
    sequence 1 has 3 (past 5). Attention-24 gets Q padded to 3 rows.
    """
    rng = np.random.RandomState(seed)
    heads, d, kv_len = 2, 8, 8
    k = rng.randn(2, heads, kv_len, d).astype(np.float32)
    v = rng.randn(2, heads, kv_len, d).astype(np.float32)
    q_short = rng.randn(1, heads, 1, d).astype(np.float32)
    q_long = rng.randn(1, heads, 3, d).astype(np.float32)
    pad = np.zeros((1, heads, 2, d), dtype=np.float32)
    expected = attend(
        q_short[0].transpose(1, 0, 2),
        k[0].transpose(1, 0, 2),
        v[0].transpose(1, 0, 2),
        offset=kv_len - 1,
        scale=1 / np.sqrt(d),
        is_causal=True,
    ).transpose(1, 0, 2)
    feeds = {"k": k, "v": v, "nonpad": np.array([kv_len, kv_len], dtype=np.int64)}
    errors = {}
    for side, q0, row in (
        ("right", np.concatenate([q_short, pad], 2), 0),
        ("left", np.concatenate([pad, q_short], 2), 2),
    ):
        q = np.concatenate([q0, q_long], 0)
        y = session(_attention_model(q, feeds)).run(None, {"q": q, **feeds})[0]
        errors[side] = float(np.abs(y[0, :, row] - expected[:, 0]).max())
    return errors


def _attention_model(q: np.ndarray, feeds: dict[str, np.ndarray]) -> onnx.ModelProto:
    """Attention-24 over given K/V with ``nonpad_kv_seqlen``, bottom-right causal."""
    b = graph_builder("pad", {"": OPSET})
    q_in = b.input("q", ir.DataType.FLOAT, list(q.shape))
    k, v, nonpad = (b.input(n, ir.DataType.from_numpy(a.dtype), list(a.shape)) for n, a in feeds.items())
    b.add_output(b.op.Attention(q_in, k, v, None, None, None, nonpad, is_causal=1), "y")
    return builder_model(b)
