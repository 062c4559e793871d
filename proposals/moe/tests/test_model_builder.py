"""mobius-onnx (the working group's model builder), offline on a tiny seeded Mixtral: its
logits equal transformers', it emits the dense all-experts form (unrolled per expert), and
the fusion rules fuse every MoE block into com.microsoft.MoE with the logits unchanged."""

from __future__ import annotations

from proposals.moe.fusion import fuse, why_missed
from proposals.moe.model_builder import build, emitted_form, logits_diff


def test_mobius_mixtral() -> None:
    proto, model = build()
    diff, scale = logits_diff(proto, model)
    # float32 logits of two engines: the rounding gap grows with their size (relative + absolute)
    assert scale > 0.01 and diff <= 1e-5 + 1e-5 * scale
    assert emitted_form(proto).startswith("dense all-experts")
    fused, report = fuse(proto)
    assert report == {"fused": model.config.num_hidden_layers, "misses": []}
    assert not any(n.op_type in ("TopK", "Equal") for n in fused.graph.node)
    assert why_missed(proto) == []
    fused_diff, _ = logits_diff(fused, model)
    assert fused_diff <= 1e-5 + 1e-5 * scale
