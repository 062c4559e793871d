"""Sliding layers as linear buffers read through a window mask (an onnx-ir pass).

A decoder that mixes circular and linear caches (Gemma 2/3) has per-layer buffer lengths;
onnxruntime-genai 0.18 binds one ``[batch, kv_heads, max_length, head_dim]`` buffer to
every layer. This pass gives it one shape: each circular ``TensorScatter`` becomes linear
(written at ``write_indices`` instead of ``write_indices mod window``), its Attention reads
``write_indices + seq`` entries instead of ``min(write_indices + seq, window)``, and an
``attn_mask`` keeps the window: query position ``p`` sees key ``j`` only when
``p - j < window`` (``is_causal=1`` keeps ``j <= p``). The graph then holds the whole
context on sliding layers too, as linear layers do: memory, not results, changes.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
import onnx_ir.passes
import onnx_ir.passes.common
from onnxscript import TapeBuilder

from generator.errors import UsageError
from generator.onnx_build import stamp
from proposals.text_pipeline.build import spec_from_model

INT64 = ir.DataType.INT64


def _const(op: TapeBuilder, value: int | list[int]) -> ir.Value:
    return op.Constant(value=ir.tensor(value, dtype=INT64))


class CircularToMaskedLinear(onnx_ir.passes.InPlacePass):
    """Every circular cache of a text-pipeline decoder as a linear one plus a window mask."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self.window = window

    def call(self, model: ir.Model) -> onnx_ir.passes.PassResult:
        graph = model.graph
        inputs = {v.name: v for v in graph.inputs}
        rings = [n for n in graph if n.op_type == "TensorScatter" and n.attributes.get_string("mode") == "circular"]
        if not rings:
            return onnx_ir.passes.PassResult(model, modified=False)
        linear = [v for v in graph.inputs if v.name.startswith("past_") and not isinstance(v.shape[2], int)]
        if not linear:
            raise UsageError("every cache is circular; this pass turns the sliding layers of mixed decoders only")
        op = TapeBuilder()
        # (B, 1, S, L): position p = write_indices + arange(seq) may read slot j when p - j < window
        zero, one = _const(op, 0), _const(op, 1)
        seq = op.Squeeze(op.Shape(inputs["input_ids"], start=1, end=2))
        length = op.Squeeze(op.Shape(linear[0], start=2, end=3))
        positions = op.Add(op.Unsqueeze(inputs["write_indices"], _const(op, [1])), op.Range(zero, seq, one))
        distance = op.Sub(op.Unsqueeze(positions, _const(op, [1, 3])), op.Range(zero, length, one))
        mask = op.Less(distance, _const(op, self.window))
        graph.insert_before(graph.node(0), op.nodes)
        for scatter in rings:
            past, present = scatter.inputs[0], scatter.outputs[0]
            scatter.attributes["mode"] = ir.AttrString("mode", "linear")
            slot = scatter.inputs[2].producer()  # Mod(write_indices, window)
            scatter.replace_input_with(2, slot.inputs[0])
            for value in (past, present):
                value.shape = ir.Shape([*past.shape[:2], linear[0].shape[2], *past.shape[3:]])
            for attention, _ in list(present.uses()):
                if attention.op_type != "Attention":
                    continue
                capped = attention.inputs[6].producer()  # Min(write_indices + seq, window)
                if capped is not None and capped.op_type == "Min":
                    attention.replace_input_with(6, capped.inputs[0])
                attention.replace_input_with(3, mask)
        onnx_ir.passes.common.RemoveUnusedNodesPass()(model)
        return onnx_ir.passes.PassResult(model, modified=True)


def masked_linear(model: onnx.ModelProto) -> onnx.ModelProto:
    """A mixed-cache decoder with one cache shape for every layer (others unchanged); its
    metadata then describes an all-linear decoder."""
    spec = spec_from_model(model)
    if not spec.mixed:
        return model
    ir_model = ir.serde.deserialize_model(model)
    ir_model = CircularToMaskedLinear(spec.sliding_window)(ir_model).model
    ir_model = onnx_ir.passes.common.NameFixPass()(ir_model).model
    out = ir.serde.serialize_model(ir_model)
    meta = {p.key: p.value for p in out.metadata_props}
    meta["sliding_window"] = "None"
    meta.pop("full_layers", None)
    del out.metadata_props[:]
    out.metadata_props.extend([onnx.StringStringEntryProto(key=k, value=v) for k, v in meta.items()])
    return stamp(out)


class LastPositionLogits(onnx_ir.passes.InPlacePass):
    """``logits`` for the last position only: the language-model head's MatMul reads
    ``x[:, -1:]``. A prefill needs only the next token's scores, and on a large vocabulary
    the head over every prompt position costs more than the layers (Gemma 3: 262,144 x 640)."""

    def call(self, model: ir.Model) -> onnx_ir.passes.PassResult:
        logits = next(v for v in model.graph.outputs if v.name == "logits")
        head = logits.producer()
        while head.op_type != "MatMul":  # past the softcap and scaling ops, all elementwise on input 0
            head = head.inputs[0].producer()
        op = TapeBuilder()
        last = op.Slice(head.inputs[0], _const(op, [-1]), _const(op, [2**62]), _const(op, [1]))
        model.graph.insert_before(head, op.nodes)
        head.replace_input_with(0, last)
        logits.shape = ir.Shape([logits.shape[0], 1, logits.shape[2]])
        return onnx_ir.passes.PassResult(model, modified=True)


def masked_prefill(model: onnx.ModelProto) -> onnx.ModelProto:
    """A mixed-cache decoder's prefill form: :func:`masked_linear`'s one cache shape, and
    the next token's logits only. A prompt past the window runs through it in chunks (the
    rings cannot take a chunk once they wrap); ``OrtRunner`` then copies each sliding layer's
    last ``window`` entries into its ring."""
    ir_model = ir.serde.deserialize_model(masked_linear(model))
    ir_model = LastPositionLogits()(ir_model).model
    return stamp(ir.serde.serialize_model(ir_model))
