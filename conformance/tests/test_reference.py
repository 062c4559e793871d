"""The one Attention reference (``proposals.kv_cache.reference.attention_outputs``,
vectorised over the batch and heads) agrees with ``proposals.paged_attention.reference.attend``,
written separately as a loop over queries and heads, one sample at a time, on every
configuration they share: 3-D or 4-D inputs, grouped-query heads, a value head size of its
own, causal or not, past keys, ``nonpad_kv_seqlen`` with its bottom-right offset (rows that
see no key at all included), an explicit scale."""

from __future__ import annotations

import numpy as np
import pytest

from generator.onnx_build import seeded
from proposals.kv_cache.reference import attention_outputs
from proposals.paged_attention.reference import attend


def _config(rng: np.random.RandomState) -> dict:
    kv_heads, group = rng.randint(1, 4), rng.randint(1, 4)
    return {
        "batch": rng.randint(1, 4),
        "kv_heads": kv_heads,
        "q_heads": kv_heads * group,
        "q_len": rng.randint(1, 6),
        "kv_len": rng.randint(1, 9),
        "past_len": rng.randint(1, 6),
        "head": rng.randint(1, 9),
        "v_head": rng.randint(1, 9),
        "cache": ["none", "past", "nonpad"][rng.randint(3)],
        "three_d": bool(rng.randint(2)),
        "is_causal": int(rng.randint(2)),
        "scale": None if rng.randint(2) else float(rng.uniform(0.05, 1.0)),
    }


def _per_sample(c: dict, q4, k4, v4, past_k, past_v, nonpad) -> list[np.ndarray]:
    """Sample b through the loop reference: its keys (past first, then the valid ones) and
    its queries' offset, each [S, H, D] as ``attend`` takes them; back as [Hq, Sq, Dv]."""
    scale = 1 / np.sqrt(c["head"]) if c["scale"] is None else c["scale"]
    out = []
    for b in range(c["batch"]):
        keys, values, offset = k4[b], v4[b], 0
        if c["cache"] == "past":
            keys, values, offset = (
                np.concatenate([past_k[b], keys], 1),
                np.concatenate([past_v[b], values], 1),
                c["past_len"],
            )
        elif c["cache"] == "nonpad":
            keys, values, offset = keys[:, : nonpad[b]], values[:, : nonpad[b]], int(nonpad[b]) - c["q_len"]
        y = attend(
            q4[b].transpose(1, 0, 2),
            keys.transpose(1, 0, 2),
            values.transpose(1, 0, 2),
            offset,
            scale,
            bool(c["is_causal"]),
        )
        out.append(y.transpose(1, 0, 2))
    return out


@pytest.mark.parametrize("seed", range(120))
def test_attention_matches_the_loop_reference(seed: int) -> None:
    rng = seeded(7000 + seed)
    c = _config(rng)
    b, hq, hkv, sq, skv, d, dv = (c[n] for n in ("batch", "q_heads", "kv_heads", "q_len", "kv_len", "head", "v_head"))
    q4, k4, v4 = rng.randn(b, hq, sq, d), rng.randn(b, hkv, skv, d), rng.randn(b, hkv, skv, dv)
    past_k, past_v = rng.randn(b, hkv, c["past_len"], d), rng.randn(b, hkv, c["past_len"], dv)
    nonpad = rng.randint(1, skv + 1, size=b)
    args = {"past_key": past_k, "past_value": past_v} if c["cache"] == "past" else {}
    if c["cache"] == "nonpad":
        args["nonpad_kv_seqlen"] = nonpad
    attrs = {"is_causal": c["is_causal"], "scale": c["scale"]}
    if c["three_d"]:  # (B, S, H*D), heads given as attributes
        q, k, v = (x.transpose(0, 2, 1, 3).reshape(b, x.shape[2], -1) for x in (q4, k4, v4))
        attrs |= {"q_num_heads": hq, "kv_num_heads": hkv}
    else:
        q, k, v = q4, k4, v4
    got = attention_outputs(q, k, v, **args, **attrs).y
    got4 = got.reshape(b, sq, hq, dv).transpose(0, 2, 1, 3) if c["three_d"] else got
    np.testing.assert_allclose(
        got4, np.stack(_per_sample(c, q4, k4, v4, past_k, past_v, nonpad)), rtol=1e-12, atol=1e-12
    )
