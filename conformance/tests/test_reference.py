"""The two Attention references, written separately from the same spec text, agree:
conformance/reference.py (every feature the fuzzer draws) and proposals/kv_cache/reference.py
(the kv_cache pattern: 4-D inputs, masks, past, nonpad_kv_seqlen, softcap, scale, windows)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from onnx import helper

from conformance import reference
from conformance.examples import attention_examples
from proposals.kv_cache import reference as kv_cache

SHARED = ("is_causal", "scale", "softcap", "left_window_size", "right_window_size")


@settings(max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
@given(attention_examples())
def test_attention_references_agree(example) -> None:
    assume(not example.params["three_d"])  # the kv_cache reference takes 4-D inputs only
    node = example.model.graph.node[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    shared = {name: value for name, value in attrs.items() if name in SHARED}
    f = example.inputs
    args = [f.get(n) for n in ("attn_mask", "past_key", "past_value", "nonpad_kv_seqlen")]
    ours = reference.attention(f["Q"], f["K"], f["V"], *args, **shared).y
    theirs = kv_cache.attention(f["Q"], f["K"], f["V"], *args, **shared)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7)
