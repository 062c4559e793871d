"""The cache step fused onto com.microsoft.GroupQueryAttention (proposals/kv_cache/fusion.py)
on every text-pipeline decoder: each layer fuses or says why not, the fused graph keeps the
in-place rule, and greedy generation with the cache bound in place matches the unfused graph."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from proposals.kv_cache import fusion, inplace
from proposals.text_pipeline import build_decoder
from proposals.text_pipeline.families import tiny_model
from proposals.text_pipeline.runners import OrtRunner

PROMPTS = [[5, 9, 30, 41, 77, 100, 3], [3, 250, 12]]  # ragged: one GQA call sees two lengths
NEW_TOKENS = 6
CIRCULAR = "circular buffer (sliding-window layer): GQA's shared buffer is linear"
# Fused layers per decoder (of 2); the others are sliding-window layers on a circular buffer.
EXPECTED = {"llama": 2, "qwen3": 2, "gemma3": 1, "mistral": 0}


def _decoder(arch: str) -> onnx.ModelProto:
    return build_decoder(tiny_model(arch, head_dim=16))


def _generate(decoder: onnx.ModelProto) -> tuple[list[list[int]], np.ndarray]:
    runner = OrtRunner(decoder)
    runner.start(len(PROMPTS), 16)
    logits, tokens = runner.append(PROMPTS), []
    for _ in range(NEW_TOKENS):
        tokens.append(logits.argmax(-1).tolist())
        logits = runner.append([[t] for t in tokens[-1]])
    return tokens, logits


@pytest.mark.parametrize("arch", EXPECTED)
def test_fused_decoder_generates_what_the_standard_one_does(arch: str) -> None:
    decoder = _decoder(arch)
    report = fusion.fusion_report(decoder)
    assert report.fused == EXPECTED[arch]
    assert set(report.misses.values()) <= {CIRCULAR}
    fused = fusion.fuse_to_gqa(decoder)
    ops = [n.op_type for n in fused.graph.node]
    assert ops.count("GroupQueryAttention") == EXPECTED[arch]
    assert ops.count("Attention") == 2 - EXPECTED[arch]
    assert inplace.in_place_hazards(fused) == []  # GQA writes the bound buffer itself
    tokens, logits = _generate(decoder)
    fused_tokens, fused_logits = _generate(fused)
    assert fused_tokens == tokens
    np.testing.assert_allclose(fused_logits, logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())


def test_head_size_not_a_multiple_of_8_is_a_stated_miss() -> None:
    report = fusion.fusion_report(build_decoder(tiny_model("llama", head_dim=12)))
    assert report.fused == 0
    assert set(report.misses.values()) == {"head size 12 is not a multiple of 8 (onnxruntime's GQA kernel needs it)"}
