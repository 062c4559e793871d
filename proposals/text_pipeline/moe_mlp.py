"""The MLP of an MoE decoder layer: one node of the MoE proposal's function op.

A transformers MoE block (Qwen3-MoE, Mixtral) is read by the MoE proposal's own
structural conversion (:func:`proposals.moe.hf.block_arrays`, which measures the routing
and the expert activation on probe tokens) and becomes one ``MoE`` node of the proposal
domain, its weights initializers of the decoder. The node's function body
(:func:`proposals.moe.body.build_function`) travels in ``model.functions``; a backend
runs it inlined or substitutes ``com.microsoft.MoE`` for it
(:func:`proposals.moe.substitute.substitute`).

The body is written against opset 21 and the decoder imports opset 24 (Attention-24,
TensorScatter-24). A model's functions must import the model's version of a domain
(``onnx.inliner`` refuses otherwise), so the body is declared at the decoder's opset
after :func:`retarget` has checked that every operator it uses has the same inputs,
outputs and attributes there (types and optional attributes may only be added).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import onnx
import onnx.defs
import onnx.inliner
import onnx_ir as ir
from onnxscript import OpBuilder

from generator.errors import UsageError
from generator.onnx_build import PROPOSAL_DOMAIN
from proposals.moe.body import build_function
from proposals.moe.hf import block_arrays, is_moe_block
from proposals.moe.schema import INPUT_NAMES, SCHEMA, resolve
from proposals.moe.substitute import substitute

__all__ = ["MOE_MODES", "for_onnxruntime", "is_moe_block", "moe_mlp", "retarget"]

# How the onnxruntime backend runs the MoE function op (device config key "moe").
MOE_MODES = {
    "inline": "onnx.inliner expands the function body into standard ops",
    "substitute": "com.microsoft.MoE where its semantics match (proposals.moe.substitute), the body elsewhere",
}


# --8<-- [start:moe_mlp]
def moe_mlp(op: OpBuilder, x: ir.Value, block) -> tuple[ir.Value, list[onnx.FunctionProto]]:
    """``block(x)`` as one MoE function-op node, and the FunctionProtos of its body."""
    arrays, attrs = block_arrays(block)  # a UsageError names what the op cannot express
    inputs = {name: op.initializer(ir.tensor(array), name) for name, array in arrays.items()}
    inputs["X"] = x
    y = getattr(op, SCHEMA.name)(*(inputs.get(n) for n in INPUT_NAMES), _domain=PROPOSAL_DOMAIN, **resolve(attrs))
    y.type, y.shape = x.type, x.shape
    return y, build_function(attrs, [n for n in INPUT_NAMES if n in inputs])


# --8<-- [end:moe_mlp]


# --8<-- [start:for_onnxruntime]
def for_onnxruntime(model: onnx.ModelProto, moe: str = "inline") -> onnx.ModelProto:
    """The decoder as the onnxruntime backend runs it: every MoE function-op node inlined
    (``moe="inline"``) or, where the kernel computes the same, replaced by
    ``com.microsoft.MoE`` (``moe="substitute"``). A dense decoder is returned as it is."""
    if moe not in MOE_MODES:
        raise UsageError(f"unknown moe mode {moe!r}; valid: {', '.join(MOE_MODES)}")
    if not model.functions:
        return model
    if moe == "substitute":
        model, _ = substitute(model)  # nodes the kernel cannot compute keep their body
    return onnx.inliner.inline_local_functions(model) if model.functions else model


# --8<-- [end:for_onnxruntime]


def retarget(functions: Sequence[onnx.FunctionProto], opset: int) -> list[onnx.FunctionProto]:
    """Copies of ``functions`` importing the default domain at ``opset``, after checking
    that each operator they use means the same there as at the version they were written
    for (same inputs and outputs, every attribute kept, no type dropped)."""
    out = []
    for function in functions:
        (written,) = [o.version for o in function.opset_import if o.domain in ("", "ai.onnx")]
        for op_type in sorted(set(_onnx_ops(function.node))):
            _same_meaning(op_type, written, opset)
        copy = onnx.FunctionProto()
        copy.CopyFrom(function)
        for entry in copy.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version = opset
        out.append(copy)
    return out


def _onnx_ops(nodes) -> Iterator[str]:
    for node in nodes:
        if node.domain in ("", "ai.onnx"):
            yield node.op_type
        for attr in node.attributes if hasattr(node, "attributes") else node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _onnx_ops(attr.g.node)


def _same_meaning(op_type: str, written: int, target: int) -> None:
    old, new = onnx.defs.get_schema(op_type, written), onnx.defs.get_schema(op_type, target)
    if old.since_version == new.since_version:
        return
    ports = [[(p.name, p.option) for p in s.inputs + s.outputs] for s in (old, new)]
    added = set(new.attributes) - set(old.attributes)
    types = [{t.type_param_str: set(t.allowed_type_strs) for t in s.type_constraints} for s in (old, new)]
    if (
        ports[0] != ports[1]
        or not set(old.attributes) <= set(new.attributes)
        or any(new.attributes[a].required for a in added)
        or any(not allowed <= types[1].get(name, set()) for name, allowed in types[0].items())
    ):
        raise NotImplementedError(
            f"{op_type}-{new.since_version} differs from {op_type}-{old.since_version}: "
            f"the MoE body (opset {written}) cannot be declared at opset {target}"
        )
