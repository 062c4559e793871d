"""The working group's model builder, mobius-onnx, side by side with this proposal.

A tiny seeded Mixtral causal LM (the export path's :func:`~proposals.moe.families.tiny_causal_lm`)
is built offline with mobius-onnx 0.1.0 (``build_from_module`` on its ``MoECausalLMModel``,
then ``apply_weights`` with the transformers state dict; no hub download). The questions:
which MoE form it emits, whether :func:`proposals.moe.fusion.fuse` recognises it, and
whether its logits (unfused and fused) equal transformers'.
"""

from __future__ import annotations

from collections import Counter
from functools import cache

import numpy as np
import onnx
import onnx_ir as ir

from generator.onnx_build import PROPOSAL_DOMAIN
from generator.ort import session

FAMILY = "mixtral"


def build(family: str = FAMILY):
    """(mobius-onnx's ONNX model, the transformers model whose weights it holds)."""
    from mobius import ArchitectureConfig, apply_weights, build_from_module
    from mobius.models.moe import MoECausalLMModel

    from proposals.moe.families import tiny_causal_lm

    model = tiny_causal_lm(family)
    config = ArchitectureConfig.from_transformers(model.config)
    module = MoECausalLMModel(config)
    package = build_from_module(module, config)
    weights = module.preprocess_weights(dict(model.state_dict()))
    apply_weights(package["model"], weights)
    return ir.serde.serialize_model(package["model"]), model


def emitted_form(proto: onnx.ModelProto) -> str:
    """Which of the three MoE forms the graph holds."""
    ops = Counter((n.domain, n.op_type) for n in proto.graph.node)
    kernels = [f"`{d}.{t}`" for (d, t) in ops if t in ("MoE", "QMoE") and d == "com.microsoft"]
    if kernels:
        return f"contrib op ({', '.join(kernels)})"
    if any(d == PROPOSAL_DOMAIN for d, _ in ops):
        return "function op / GroupedMatMul primitives"
    topk = ops[("", "TopK")]
    return (
        f"dense all-experts primitives: {topk} TopK routers, every expert's MLP run on every token "
        f"and masked by {ops[('', 'Equal')]} `Equal(selected_experts, e)` nodes"
    )


def logits_diff(proto: onnx.ModelProto, model) -> tuple[float, float]:
    """(max |logits - transformers|, max |logits|) on a seeded prompt, empty cache."""
    import torch

    from proposals.moe.families import Logits

    ids = np.random.RandomState(0).randint(0, model.config.vocab_size, (2, 6)).astype(np.int64)
    with torch.no_grad():
        expected = Logits(model)(torch.from_numpy(ids)).numpy()
    sess = session(proto)
    feed = {
        "input_ids": ids,
        "attention_mask": np.ones(ids.shape, np.int64),
        "position_ids": np.tile(np.arange(ids.shape[1], dtype=np.int64), (ids.shape[0], 1)),
    }
    for value in sess.get_inputs():
        if value.name.startswith("past_key_values"):
            feed[value.name] = np.zeros((ids.shape[0], value.shape[1], 0, value.shape[3]), np.float32)
    got = sess.run(["logits"], feed)[0]
    return float(np.abs(got - expected).max()), float(np.abs(expected).max())


@cache  # shown on the proposal page: built once per site build
def side_by_side() -> str:
    """The page's mobius-onnx paragraph: form, fusion result, parity."""
    from importlib.metadata import version

    from proposals.moe.fusion import fuse, why_missed

    proto, model = build()
    fused, report = fuse(proto)
    diff, scale = logits_diff(proto, model)
    reasons = "; ".join(sorted(set(why_missed(proto)) | set(report["misses"]))) or "no reason found"
    fusion = (
        f"{report['fused']} of {model.config.num_hidden_layers} MoE blocks fused into `com.microsoft.MoE` "
        f"(the unrolled loop folded by `UnrolledExpertsToDense`, then the dense rule); the fused model's "
        f"max |logits − transformers| = {logits_diff(fused, model)[0]:.1e}"
        if report["fused"]
        else f"no block fused. No rule starts to match: {reasons}"
    )
    return (
        f"- **Built**: mobius-onnx {version('mobius-onnx')}, tiny seeded `{FAMILY}` causal LM "
        f"({model.config.num_hidden_layers} MoE layers), offline.\n"
        f"- **Form emitted**: {emitted_form(proto)}.\n"
        f"- **Fusion rules**: {fusion}.\n"
        f"- **Parity**: max |logits − transformers| = {diff:.1e} (logits up to {scale:.2f}) on onnxruntime."
    )
