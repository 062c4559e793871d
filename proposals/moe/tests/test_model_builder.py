"""mobius-onnx (the working group's model builder), offline on a tiny seeded Mixtral: its
logits equal transformers', it emits the dense all-experts form, and the fusion rules
leave it alone for the one condition :func:`proposals.moe.fusion.why_missed` names."""

from __future__ import annotations

from proposals.moe.fusion import fuse, why_missed
from proposals.moe.model_builder import build, emitted_form, logits_diff


def test_mobius_mixtral() -> None:
    proto, model = build()
    diff, scale = logits_diff(proto, model)
    assert scale > 0.01 and diff < 1e-5
    assert emitted_form(proto).startswith("dense all-experts")
    assert fuse(proto)[1] == {"fused": 0, "misses": []}
    reasons = why_missed(proto)
    assert len(reasons) == model.config.num_hidden_layers
    assert all(r.startswith("TopK's indices feed no GroupedMatMul (every expert runs") for r in reasons)
