"""QuantizedAttention: Attention-24 that reads a cache of codes, as a function op.

The body is the standard-op read path, DequantizeLinear on each cache and Attention-24;
a runtime without a kernel inlines it, a runtime with one (ORT's GQA-style kernels)
dispatches on the node instead of pattern-matching DQ -> Attention. The write path
(QuantizeLinear, TensorScatter) stays outside, as the external cache of Attention-24 does.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes
from onnxscript import TapeBuilder, script
from onnxscript.values import Opset

from generator.errors import UsageError
from generator.onnx_build import PROPOSAL_DOMAIN, stamp

OPSET = 24
op = Opset("", OPSET)
proposal = Opset(PROPOSAL_DOMAIN, 1)


# --8<-- [start:body]
@script(proposal, default_opset=op)
def QuantizedAttention(
    query,
    key_cache,
    value_cache,
    key_scale,
    value_scale,
    nonpad_kv_seqlen,
    key_axis: int,
    key_block_size: int,
    value_axis: int,
    value_block_size: int,
    scale: float,
    is_causal: int = 1,
    softcap: float = 0.0,
):
    # DequantizeLinear-24: (codes - 0) * scale, per tensor (block_size 0, scalar scale)
    # or blocked along axis (scale shaped like the cache but ceil(dim/block) on axis).
    key = op.DequantizeLinear(key_cache, key_scale, axis=key_axis, block_size=key_block_size)
    value = op.DequantizeLinear(value_cache, value_scale, axis=value_axis, block_size=value_block_size)
    return op.Attention(
        query, key, value, None, None, None, nonpad_kv_seqlen, is_causal=is_causal, scale=scale, softcap=softcap
    )


# --8<-- [end:body]


# --8<-- [start:fuse]
class FuseQuantizedAttention(onnx_ir.passes.InPlacePass):
    """DQ(key) + DQ(value) -> Attention in a standard-form step, replaced by one QuantizedAttention.

    Match conditions, the §5 conditions a runtime must check to fuse (a): the graph has a
    standard-domain Attention with no attribute the op lacks; each of its K and V inputs is
    a DequantizeLinear output read by nothing else; neither DequantizeLinear has a zero
    point (the op is symmetric).
    """

    def call(self, model: ir.Model) -> onnx_ir.passes.PassResult:
        from proposals.quantized_attention.spec import SCHEMA

        graph = model.graph
        attention = next((n for n in graph if n.op_type == "Attention" and n.domain == ""), None)
        if attention is None:
            raise UsageError("no Attention node to fuse; expected the Q -> TensorScatter -> DQ -> Attention step")
        unsupported = set(attention.attributes) - {"is_causal", "scale", "softcap"}
        if unsupported:
            raise UsageError(f"Attention attributes {sorted(unsupported)} have no QuantizedAttention equivalent")
        dqs = [attention.inputs[1].producer(), attention.inputs[2].producer()]
        attrs = {}
        for role, dq in zip(("key", "value"), dqs, strict=True):
            if dq is None or dq.op_type != "DequantizeLinear":
                raise UsageError(f"Attention's {role} input is not a DequantizeLinear output")
            if len(dq.inputs) > 2 and dq.inputs[2] is not None:
                raise UsageError(f"the {role} DequantizeLinear has a zero point; QuantizedAttention is symmetric")
            if len(dq.outputs[0].uses()) != 1:
                raise UsageError(f"the dequantized {role} cache has other consumers than Attention")
            attrs[f"{role}_axis"] = dq.attributes.get_int("axis", 1)
            attrs[f"{role}_block_size"] = dq.attributes.get_int("block_size", 0)
        head_dim = attention.inputs[0].shape[-1]
        attrs["scale"] = attention.attributes.get_float("scale", float(1 / np.sqrt(head_dim)))
        attrs["is_causal"] = attention.attributes.get_int("is_causal", 0)
        attrs["softcap"] = attention.attributes.get_float("softcap", 0.0)
        inputs = [attention.inputs[0], dqs[0].inputs[0], dqs[1].inputs[0], dqs[0].inputs[1], dqs[1].inputs[1]]
        op = TapeBuilder()
        y = SCHEMA.call(op, *inputs, attention.inputs[6], _name="quantized_attention", **attrs)
        y.name, y.type, y.shape = "y", ir.TensorType(ir.DataType.FLOAT), attention.outputs[0].shape
        graph.insert_before(attention, op.nodes)
        attention.outputs[0].replace_all_uses_with(y, replace_graph_outputs=True)
        for node in (attention, *dqs):
            graph.remove(node, safe=True)
        graph.opset_imports[PROPOSAL_DOMAIN] = 1
        model.functions[QuantizedAttention.function_ir.identifier()] = QuantizedAttention.function_ir
        return onnx_ir.passes.PassResult(model, modified=True)


def fuse(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run :class:`FuseQuantizedAttention` on a model proto: the fused step, with the op's
    body as a model-local function, stamped."""
    fused = FuseQuantizedAttention()(ir.serde.deserialize_model(model)).model  # alone: Sequential wraps UsageError
    return stamp(ir.serde.serialize_model(fused))


# --8<-- [end:fuse]
