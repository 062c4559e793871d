"""Greedy parity: the onnxruntime backend is token-identical to transformers ``generate``
for a batch of two prompts of different lengths, 64 new tokens."""

from __future__ import annotations

import onnx
import pytest

from proposals.text_pipeline.families import tiny_model
from proposals.text_pipeline.folder import decoder_bytes
from proposals.text_pipeline.report import PROMPTS, greedy, hf_greedy
from proposals.text_pipeline.runners import OrtRunner, TorchRunner
from proposals.text_pipeline.tokenizer import load_tokenizer

NEW_TOKENS = 64


ARCHS = [
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "phi3",
    "phi3_partial",
    "olmo2",
    "granite",
    "smollm3",
    "gemma2",
    "gemma3",
]


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_batch_is_token_identical(arch):
    """Prompts of 5 and 23 tokens; the longer one overflows Mistral's 16-token window, and
    both outgrow Gemma's 8-token window on its sliding layers (its full layers stay linear)."""
    model = tiny_model(arch)
    decoder = onnx.load_from_string(decoder_bytes(arch))
    prompts = [load_tokenizer().encode(p).ids for p in PROMPTS]
    assert [len(p) for p in prompts] == [5, 23]
    expected = hf_greedy(model, prompts, NEW_TOKENS)  # transformers generate, left-padded batch
    assert all(len(row) == NEW_TOKENS for row in expected)
    assert greedy(OrtRunner(decoder), prompts, NEW_TOKENS) == expected
    assert greedy(OrtRunner(decoder, inplace=False), prompts, NEW_TOKENS) == expected
    assert greedy(TorchRunner(model), prompts, NEW_TOKENS) == expected
