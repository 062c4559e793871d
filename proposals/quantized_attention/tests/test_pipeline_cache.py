"""The pipeline's int8 KV-cache format: every layer of a text-pipeline decoder in the
standard-op form Q -> TensorScatter -> DQ -> Attention, checked against the reference's
quantizer and against the accuracy study's fake-quantized decoder."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from generator.errors import UsageError
from generator.ort import session
from proposals.quantized_attention import reference
from proposals.quantized_attention.accuracy import quantize_cache_writes
from proposals.quantized_attention.pipeline_cache import PIPELINE_FORMATS, quantized_cache_decoder
from proposals.quantized_attention.reference import CacheQuant
from proposals.text_pipeline.build import spec_from_model
from proposals.text_pipeline.cache_formats import cache_buffers, cache_format_names, with_cache_format
from proposals.text_pipeline.folder import decoder_bytes
from proposals.text_pipeline.runners import OrtRunner

INT8 = PIPELINE_FORMATS["int8"]
PROMPT = [5, 17, 42, 9, 33, 71, 8, 23, 64, 12]


def _decoder(arch: str) -> onnx.ModelProto:
    return onnx.load_from_string(decoder_bytes(arch))


def test_the_pipeline_finds_the_format_without_importing_this_proposal() -> None:
    assert "int8" in cache_format_names()


def test_cache_inputs_become_int8_codes_and_float32_scale_caches() -> None:
    decoder = with_cache_format(_decoder("llama"), "int8")
    onnx.checker.check_model(decoder, full_check=True)
    spec = spec_from_model(decoder)
    buffers = {b.name: b for b in cache_buffers(decoder)}
    for i in range(spec.num_layers):
        for kind in ("key", "value"):
            codes, scales = buffers[f"{kind}_{i}"], buffers[f"{kind}_{i}_scale"]
            assert (codes.dtype.name, codes.dims) == ("INT8", ("batch", spec.num_kv_heads, "cache_len", spec.head_dim))
            assert (scales.dtype.name, scales.dims) == ("FLOAT", ("batch", spec.num_kv_heads, "cache_len", 1))
    outputs = [o.name for o in decoder.graph.output]
    assert outputs[1:] == [f"present_{name}" for name in buffers]  # each present beside its past, same order


def test_written_codes_are_the_reference_quantization_of_the_float_rows() -> None:
    """Layer 0's new rows do not depend on the cache, so the float decoder's present rows,
    quantized by the numpy reference, must equal the int8 decoder's codes and scales."""
    base = _decoder("llama")
    quantized = with_cache_format(base, "int8")
    spec = spec_from_model(base)
    shape = spec.cache_shape(1, len(PROMPT))
    feeds = {"input_ids": np.array([PROMPT], np.int64), "write_indices": np.array([0], np.int64)}
    float_out = dict(
        zip(
            [o.name for o in base.graph.output],
            session(base).run(
                None, {**feeds, **{f"past_{b.name}": np.zeros(shape, np.float32) for b in cache_buffers(base)}}
            ),
            strict=True,
        )
    )
    caches = {f"past_{b.name}": np.zeros(b.shape(1, len(PROMPT)), b.numpy_dtype) for b in cache_buffers(quantized)}
    int8_out = dict(
        zip([o.name for o in quantized.graph.output], session(quantized).run(None, {**feeds, **caches}), strict=True)
    )
    for kind in ("key", "value"):
        codes, scales = reference.quantize_rows(INT8, float_out[f"present_{kind}_0"])
        np.testing.assert_array_equal(int8_out[f"present_{kind}_0"], codes)
        np.testing.assert_array_equal(int8_out[f"present_{kind}_0_scale"], scales)


def _greedy_logits(decoder: onnx.ModelProto, steps: int) -> list[np.ndarray]:
    runner = OrtRunner(decoder, threads=1)
    runner.start(1, len(PROMPT) + steps)
    logits = [runner.append([PROMPT])[0]]
    for _ in range(steps - 1):
        logits.append(runner.append([[int(logits[-1].argmax())]])[0])
    return logits


@pytest.mark.parametrize("arch", ["llama", "mistral"])  # mistral: a circular cache that wraps
def test_stored_int8_cache_computes_what_the_fake_quantized_study_decoder_computes(arch: str) -> None:
    """The accuracy study quantizes rows and keeps them in float32 (DQ(Q(rows)) before the
    scatter); storing the codes and dequantizing on read must give the same logits."""
    base = _decoder(arch)
    spec = spec_from_model(base)
    names = [b.name for b in cache_buffers(base)]
    study = quantize_cache_writes(base, dict.fromkeys(names, INT8), spec.head_dim)
    steps = 24  # past mistral's 16-slot window
    for stored, fake in zip(
        _greedy_logits(quantized_cache_decoder(base, INT8), steps), _greedy_logits(study, steps), strict=True
    ):
        np.testing.assert_allclose(stored, fake, rtol=1e-5, atol=1e-5)


def test_static_scales_and_quantized_inputs_are_refused_in_one_line() -> None:
    scale = np.array(0.1, np.float32)
    with pytest.raises(UsageError, match="static and need calibration"):
        quantized_cache_decoder(_decoder("llama"), CacheQuant("int8", "per_tensor", scale))
    with pytest.raises(UsageError, match="not a float32 graph input") as err:
        quantized_cache_decoder(with_cache_format(_decoder("llama"), "int8"), INT8)
    assert "\n" not in str(err.value)
