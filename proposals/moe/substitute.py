"""Backend substitution: MoE function-op nodes -> onnxruntime's ``com.microsoft.MoE``,
done by the fusion rules of :mod:`proposals.moe.fusion` on the inlined body.

A backend with its own MoE kernel replaces the function op where the semantics
match and leaves the rest to the body. ORT 1.32's CPU kernel computes
``softmax(router_probs)`` over all experts, top-k, optional renormalization, then
``sum w * fc2(act(fc1(x)))``; its SwiGLU needs gate/up *interleaved* in fc1
(``swiglu_fusion=1``; CPU has no fc3 and no concatenated layout), and its ``gelu``
is the tanh approximation. Weights are ``[E, out, in]``, so the rewrite re-lays out
the (constant) expert weights once.
"""

from __future__ import annotations

import copy

import onnx

from generator.onnx_build import stamp
from proposals.moe.fusion import fuse
from proposals.moe.ort_moe import node_attrs, why_not
from proposals.moe.schema import INPUT_NAMES, SCHEMA


def substitute(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, str]]:
    """A copy of ``model`` with every expressible MoE node replaced by com.microsoft.MoE,
    and, per MoE node, ``"com.microsoft.MoE"`` or why it was left alone.

    The replacement is done by the pattern-match fusion rules of
    :mod:`proposals.moe.fusion` on the inlined body; :func:`why_not` decides, from the
    node's attributes, which nodes are handed to them, and the fusion must then match."""
    constants = {i.name for i in model.graph.initializer}
    report = {}
    for node in model.graph.node:
        if (node.domain, node.op_type) == (SCHEMA.domain, SCHEMA.name):
            names = {f: v for f, v in zip(INPUT_NAMES, node.input, strict=False) if v}
            reason = why_not(node_attrs(node), set(names), {f for f, v in names.items() if v in constants})
            report[node.name or node.output[0]] = reason or "com.microsoft.MoE"
    if not any(r == "com.microsoft.MoE" for r in report.values()):
        return copy.deepcopy(model), report
    if any(r != "com.microsoft.MoE" for r in report.values()):
        raise NotImplementedError("a model mixing expressible and other MoE nodes")  # one body per model
    fused, fusion_report = fuse(model)
    if fusion_report["fused"] != len(report):
        raise AssertionError(f"the fusion rules missed an expressible MoE node: {fusion_report}")
    return stamp(fused), report
