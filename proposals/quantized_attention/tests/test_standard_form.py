"""The standard-op form: the runtime gaps reproduce, and the builders reject bad input."""

from __future__ import annotations

import numpy as np
import pytest

from generator.errors import UsageError
from proposals.quantized_attention import build, gaps, reference
from proposals.quantized_attention.reference import CacheQuant


@pytest.mark.parametrize("gap", gaps.GAPS, ids=lambda g: g.file)
def test_committed_repro_model_is_current(gap: gaps.Gap) -> None:
    assert (gaps.REPRO / gap.file).read_bytes() == gap.build().SerializeToString(deterministic=True)


def test_ort_tensor_scatter_lacks_int4_and_float8_but_the_reference_runs_them() -> None:
    for gap in gaps.GAPS[:2]:
        found = gaps.probe(gap)
        assert found["shape_inference"] == found["reference"] == "ran"
        assert "NOT_IMPLEMENTED" in found["onnxruntime"] and "TensorScatter(24)" in found["onnxruntime"]


def test_batch_shared_blocked_scale_passes_shape_inference_but_no_runtime() -> None:
    found = gaps.probe(gaps.GAPS[2])
    assert found["shape_inference"] == "ran"
    assert "Blocked Quantization" in found["reference"]
    assert "DequantizeLinear" in found["onnxruntime"] and "PrepareForQDQ" in found["onnxruntime"]


def test_builder_expands_the_per_channel_scale_to_the_batch() -> None:
    scale = np.ones((1, 2, 1, 64), np.float32)
    model = build.quant_cache_step_model(
        CacheQuant("int8", "per_channel", scale),
        CacheQuant("int8", "per_token"),
        q_heads=4,
        kv_heads=2,
        max_len=8,
        head_dim=64,
    )
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("Expand") == 1 and ops.count("TensorScatter") == 3  # key, value, value scales
    assert [i.name for i in model.graph.input][-3:] == ["past_value_scale", "write_indices", "nonpad_kv_seqlen"]


def test_cache_step_rejects_a_cache_of_the_wrong_dtype() -> None:
    quant = CacheQuant("int8", "per_tensor", np.float32(0.1))
    cache = np.zeros((1, 1, 4, 32), np.float32)
    q = np.zeros((1, 1, 1, 32), np.float32)
    with pytest.raises(UsageError, match="cache must be int8"):
        reference.cache_step(quant, quant, (cache, cache, None, None), [0], q, q, q)
