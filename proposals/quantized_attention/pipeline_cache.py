"""The text pipeline's quantized KV-cache formats (``--kv-cache int8``): this proposal's
standard-op form applied to every layer of a ``build_decoder`` decoder.

Each layer's ``TensorScatter(past, rows)`` -> ``Attention`` becomes::

    rows ─QuantizeLinear─► codes ─TensorScatter─► present_key_i (int8) ─DequantizeLinear─► Attention
    (ReduceMax|rows|/127 ─TensorScatter─► present_key_i_scale (float32) ──┘)

so the graph's cache inputs hold int8 codes (``past_key_i``, ``past_value_i``) and one
float32 scale per token and head (``past_key_i_scale``, ``past_value_i_scale``), written
at the same slots, linear or circular. Keys and values are both quantized per token with
dynamic scales: no calibration, so a pipeline can switch formats on any model folder
(static per-tensor / per-channel scales would need calibration data). It is the
``int8 K per_token / V per_token`` row of the accuracy study; the figures the pipeline
reports are in ``proposals/text_pipeline/bench/kv_cache.json``.

Importing this module registers the formats with the text pipeline (pyproject.toml's
``[tool.onnx-genai-proposals] kv-cache-formats`` names it).
"""

from __future__ import annotations

import onnx
import onnx_ir as ir
import onnx_ir.passes.common
from onnxscript import TapeBuilder

from generator.errors import UsageError
from generator.onnx_build import stamp
from proposals.quantized_attention.build import CODE_TYPES, cache_io
from proposals.quantized_attention.reference import CacheQuant
from proposals.text_pipeline.cache_formats import register_cache_format

F32 = ir.DataType.FLOAT
# --8<-- [start:formats]
PIPELINE_FORMATS = {"int8": CacheQuant("int8", "per_token")}  # format name -> how K and V are stored
# --8<-- [end:formats]


# --8<-- [start:rewrite]
class QuantizeDecoderCache(onnx_ir.passes.InPlacePass):
    """Every ``present_{key,value}_i`` TensorScatter of a float32 decoder -> the quantized
    standard form (:func:`build.cache_io`), its past/present buffers retyped to codes and a
    scale cache added beside each dynamic one."""

    def __init__(self, quant: CacheQuant) -> None:
        super().__init__()
        self.quant = quant

    def call(self, model: ir.Model) -> onnx_ir.passes.PassResult:
        graph = model.graph
        scatters = [n for n in graph if n.op_type == "TensorScatter" and n.outputs[0].name.startswith("present_")]
        if not scatters:
            raise UsageError("no present_* TensorScatter in the decoder: not a float32 build_decoder decoder")
        stored = [v for v in graph.inputs if v.name.startswith("past_") and v.dtype != F32]
        # Checked before any edit, so a refused model is never left half rewritten.
        if stored:
            raise UsageError(f"{stored[0].name} is not a float32 graph input; the cache is already {stored[0].dtype}")
        if any(node.inputs[0] not in graph.inputs for node in scatters):
            raise UsageError(
                "a present_* TensorScatter does not write a graph-input cache: not a build_decoder decoder"
            )
        for node in scatters:
            self._quantize(graph, node)
        onnx_ir.passes.common.RemoveUnusedNodesPass()(model)
        return onnx_ir.passes.PassResult(model, modified=True)

    def _quantize(self, graph: ir.Graph, scatter: ir.Node) -> None:
        past, rows, write = scatter.inputs
        old = scatter.outputs[0]
        name = old.name.removeprefix("present_")  # key_0, value_0, ...
        batch, heads, length, head_dim = past.shape
        pasts = [past]
        if self.quant.dynamic:  # the scale cache: one float32 per token and group, beside the codes
            groups = self.quant.scale_cache_shape(1, 1, 1, head_dim)[3]
            scale_past = ir.Value(
                name=f"past_{name}_scale", type=ir.TensorType(F32), shape=ir.Shape([batch, heads, length, groups])
            )
            graph.inputs.insert(graph.inputs.index(past) + 1, scale_past)
            pasts.append(scale_past)
        past.type = ir.TensorType(CODE_TYPES[self.quant.dtype])
        mode = scatter.attributes.get_string("mode", "linear")
        op = TapeBuilder()
        presents, read = cache_io(op, name, rows, self.quant, pasts, None, write, (heads, length, head_dim), mode)
        graph.insert_before(scatter, op.nodes)
        for init in op.initializers:
            graph.register_initializer(init)
        index = list(graph.outputs).index(old)
        old.name = f"{old.name}_float"
        graph.outputs[index] = presents[0]  # the graph returns the codes and scales ...
        old.replace_all_uses_with(read)  # ... and Attention reads the dequantized cache
        for offset, present in enumerate(presents):  # each present as its past: name, type, shape
            present.name = f"present_{pasts[offset].name.removeprefix('past_')}"
            present.type, present.shape = pasts[offset].type, pasts[offset].shape
            if offset:
                graph.outputs.insert(index + offset, present)


# --8<-- [end:rewrite]


def quantized_cache_decoder(decoder: onnx.ModelProto, quant: CacheQuant) -> onnx.ModelProto:
    """A float32 ``build_decoder`` decoder storing its KV cache as ``quant`` says (dynamic
    granularities only: the pipeline has no calibration data for static scales)."""
    if not quant.dynamic:
        raise UsageError(
            f"{quant.granularity} scales are static and need calibration; the pipeline formats are dynamic"
        )
    ir_model = QuantizeDecoderCache(quant)(ir.serde.deserialize_model(decoder)).model
    return stamp(ir.serde.serialize_model(ir_model))


def _register() -> None:
    for name, quant in PIPELINE_FORMATS.items():
        register_cache_format(
            name,
            lambda decoder, quant=quant: quantized_cache_decoder(decoder, quant),
            f"{quant.dtype} codes, K and V {quant.granularity} with a float32 scale cache (Q -> TensorScatter -> DQ)",
        )


_register()
