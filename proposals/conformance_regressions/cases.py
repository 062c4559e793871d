"""Zoo regression cases: one per recorded divergence that a zoo case can express.

Each case is the minimal model of an upstream-ready repro folder (``repros/<slug>/``,
written by :mod:`conformance.repros`), with the expected outputs of the float64 spec
reference, and ``divergences`` naming the runtimes that disagree and why. The matrix then
tracks each divergence: a fix upstream turns its cell into a pass, and recording that
new baseline is a visible change.
"""

from __future__ import annotations

from collections.abc import Mapping

import onnx_ir as ir

from generator import Case, DataSet, case
from proposals.conformance_regressions.reference import reason, repro


def _regression(slug: str, divergences: Mapping[str, str], *, rtol: float = 1e-5, atol: float = 1e-5) -> Case:
    """The repro's model, inputs and spec-reference outputs as a one-dataset case."""
    model, inputs, expected = repro(slug).build()
    return Case(model, [DataSet(inputs, expected)], rtol=rtol, atol=atol, divergences=dict(divergences))


@case
def tensorscatter_circular_batch_gt_max_seq() -> Case:
    """TensorScatter-24 circular, batch 3 > max_sequence_length 2: only the sequence index wraps."""
    # onnx 1.19-1.22's reference wrapped the batch index too; fixed in onnx 1.23 (onnx#8353).
    return _regression("onnx-tensorscatter-circular-batch-wrap", {})


@case
def attention_causal_past_offset() -> Case:
    """Attention-23 is_causal with past_key (1 cached, 2 new keys, 1 query): offset = past length."""
    return _regression(
        "openvino-attention-causal-past-offset",
        {
            "openvino": reason("openvino-attention-causal-past-offset"),
            "onnxruntime": reason("onnxruntime-attention-causal-past-offset"),
            "tract": reason("tract-attention-causal-past-top-left"),
        },
    )


@case
def attention_bool_mask_excludes_keys() -> Case:
    """Attention-23 bool attn_mask [True, False], value head 4 != key head 2: key 1 is excluded."""
    return _regression("tract-attention-bool-mask-added", {"tract": reason("tract-attention-bool-mask-added")})


@case
def attention_qk_mode0_raw_with_softcap() -> Case:
    """Attention-24 softcap 2 with qk_matmul_output mode 0: the raw scaled QK product, not the capped one."""
    slug = "onnx-reference-attention-qk-mode0-softcap"
    return _regression(slug, {"reference": reason(slug)})


@case
def attention_qk_mode2_neg_inf() -> Case:
    """Attention-24 bool mask with qk_matmul_output mode 2: masked scores are -inf."""
    slug = "onnxruntime-attention-qk-mode2-lowest-not-inf"
    return _regression(slug, {"onnxruntime": reason(slug)})


@case
def attention_short_mask_with_nonpad() -> Case:
    """Attention-24 attn_mask of length 2 for 4 keys with nonpad_kv_seqlen 2: the mask is padded."""
    slug = "onnxruntime-attention-short-mask-rejected"
    return _regression(slug, {"onnxruntime": reason(slug)})


@case
def swiglu28_function_body() -> Case:
    """SwiGLU-28 (alpha 1): Y = A * sigmoid(A) * B through the op's Swish-24 function body."""
    slug = "onnxruntime-swiglu28-no-swish24-kernel"
    return _regression(slug, {"onnxruntime": reason(slug)})


@case
def loop_empty_condition() -> Case:
    """Loop with a trip count of 3 (an initializer) and an empty condition input: three iterations."""
    slug = "onnx-reference-loop-empty-condition"
    model, inputs, expected = repro(slug).build()
    # The trip count becomes a constant: the zoo writer stores a 0-d input as shape [1].
    graph = ir.from_proto(model)
    trip = next(value for value in graph.graph.inputs if value.name == "trip_count")
    graph.graph.inputs.remove(trip)
    trip.const_value = ir.tensor(inputs.pop("trip_count"), name="trip_count")
    graph.graph.register_initializer(trip)
    return Case(ir.to_proto(graph), [DataSet(inputs, expected)], divergences={"reference": reason(slug)})


@case
def gatherelements_negative_axis() -> Case:
    """GatherElements axis -1 with indices narrower than data on that axis."""
    slug = "onnx-reference-gatherelements-negative-axis"
    return _regression(slug, {"reference": reason(slug)})


@case
def local_function_attribute_default() -> Case:
    """A model-local function whose alpha attribute defaults to 2.0, called without alpha."""
    slug = "onnx-inliner-drops-attribute-defaults"
    return _regression(
        slug,
        {
            "openvino-inlined": reason(slug),
            "reference": reason("onnx-reference-local-function-attribute-default"),
        },
    )
