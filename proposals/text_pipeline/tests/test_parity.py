"""Greedy parity: the onnxruntime backend is token-identical to transformers ``generate``
for a batch of two prompts of different lengths, 32 new tokens."""

from __future__ import annotations

import onnx
import pytest
import torch

from proposals.text_pipeline.config import GenerationConfig
from proposals.text_pipeline.folder import decoder_bytes
from proposals.text_pipeline.generator import Generator
from proposals.text_pipeline.models import tiny_model
from proposals.text_pipeline.runners import OrtRunner, TorchRunner
from proposals.text_pipeline.tokenizer import load_tokenizer

# 5 and 23 tokens: the longer one also overflows Mistral's 16-token window in the prompt
PROMPTS = ("The KV cache", "TensorScatter writes the new keys into the static buffer at")
PAD = 1


def hf_generate(model, prompts: list[list[int]], new: int) -> list[list[int]]:
    """transformers generate on a left-padded batch: the independent reference."""
    width = max(map(len, prompts))
    ids = torch.tensor([[PAD] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=PAD,
            eos_token_id=None,
        )
    return [row[width:].tolist() for row in out]


def run(runner, prompts: list[list[int]], new: int) -> list[list[int]]:
    gen = Generator(runner, GenerationConfig(max_new_tokens=new), batch_size=len(prompts))
    gen.append_input_tokens(prompts)
    while not gen.is_done():
        gen.generate_next_token()
    return [s.new_tokens for s in gen.seqs]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
def test_greedy_batch_is_token_identical(arch):
    model = tiny_model(arch)
    decoder = onnx.load_from_string(decoder_bytes(arch))
    prompts = [load_tokenizer().encode(p).ids for p in PROMPTS]
    assert len({len(p) for p in prompts}) == 2
    expected = hf_generate(model, prompts, 32)
    assert all(len(row) == 32 for row in expected)
    assert run(OrtRunner(decoder), prompts, 32) == expected
    assert run(OrtRunner(decoder, inplace=False), prompts, 32) == expected
    assert run(TorchRunner(model), prompts, 32) == expected
