"""The openvino-genai backend: OpenVINO GenAI's LLMPipeline on a model converted from the
same seeded weights, token-identical to the onnxruntime backend and to transformers."""

from __future__ import annotations

import pytest
import torch

from generator.errors import UsageError
from proposals.text_pipeline import GenerationConfig, GenerationInput, create_pipeline
from proposals.text_pipeline.families import tiny_model
from proposals.text_pipeline.folder import write_folder

PROMPTS = [GenerationInput("Attention reads the whole cache"), GenerationInput("The")]


@pytest.mark.parametrize("arch", ["llama", "qwen3", "qwen3_moe"])
def test_llmpipeline_is_token_identical(tmp_path, arch):
    """A batch of prompts of two lengths (ContinuousBatchingPipeline), and one prompt alone
    (LLMPipeline). The MoE decoders used to fail in OpenVINO's Split (eager routing traced)."""
    folder = write_folder(arch, tmp_path / arch)
    config = GenerationConfig(max_new_tokens=24)
    tokens = {}
    for backend in ("onnxruntime", "openvino-genai"):
        pipeline = create_pipeline(backend, folder)
        pipeline.set_generation_config(config)
        tokens[backend] = [r.token_ids for r in pipeline.generate(PROMPTS)]
    model = tiny_model(arch)
    ids = [pipeline.encode(p) for p in PROMPTS]
    with torch.no_grad():
        expected = [
            tuple(model.generate(torch.tensor([i]), max_new_tokens=24, do_sample=False)[0, len(i) :].tolist())
            for i in ids
        ]
    assert tokens["openvino-genai"] == tokens["onnxruntime"] == expected
    assert [len(t) for t in expected] == [24, 24]


def test_equal_length_batch_and_a_single_prompt(tmp_path):
    folder = write_folder("llama", tmp_path / "llama")
    prompts = [GenerationInput("KV cache"), GenerationInput("The cache")]  # 3 tokens each
    config = GenerationConfig(max_new_tokens=12)
    results = {}
    for backend in ("onnxruntime", "openvino-genai"):
        pipeline = create_pipeline(backend, folder)
        pipeline.set_generation_config(config)
        assert len({len(pipeline.encode(p)) for p in prompts}) == 1
        results[backend] = [r.token_ids for r in pipeline.generate(prompts)] + [pipeline(prompts[1]).token_ids]
    assert results["openvino-genai"] == results["onnxruntime"]
    assert results["onnxruntime"][1] == results["onnxruntime"][2]


def test_sliding_window_models_are_refused(tmp_path):
    folder = write_folder("mistral", tmp_path / "mistral")
    with pytest.raises(UsageError, match="does not convert sliding-window models .*; supported: models without"):
        create_pipeline("openvino-genai", folder)
