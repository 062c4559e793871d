"""masked_window: a mixed-cache decoder with its rings as linear buffers plus a window mask
gives transformers' logits, and prefills a prompt longer than the window in one run."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from proposals.text_pipeline.build import spec_from_model
from proposals.text_pipeline.families import tiny_model
from proposals.text_pipeline.folder import decoder_bytes
from proposals.text_pipeline.masked_window import masked_linear
from proposals.text_pipeline.runners import OrtRunner


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_rings_become_masked_linear_buffers(arch):
    decoder = masked_linear(onnx.load_from_string(decoder_bytes(arch)))
    onnx.checker.check_model(decoder, full_check=True)
    modes = {a.s for n in decoder.graph.node if n.op_type == "TensorScatter" for a in n.attribute if a.name == "mode"}
    assert modes == {b"linear"}
    lengths = {i.type.tensor_type.shape.dim[2].dim_param for i in decoder.graph.input if i.name.startswith("past_")}
    assert lengths == {"cache_len"}  # one shape for every layer, as onnxruntime-genai binds it
    masked = [n.input[3] != "" if len(n.input) > 3 else False for n in decoder.graph.node if n.op_type == "Attention"]
    assert masked == [True, False]  # the sliding layer 0 reads through the window mask
    spec = spec_from_model(decoder)
    assert (spec.sliding_window, spec.full_layers) == (None, ())
    runner = OrtRunner(decoder)
    runner.start(1, 64)
    tokens = [(7 * i + 3) % 500 for i in range(30)]  # one run: 30 tokens, window 8
    got = runner.append([tokens])[0]
    with torch.no_grad():
        want = tiny_model(arch)(torch.tensor([tokens])).logits[0, -1].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)  # float32 logits: error scales with size


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_decoders_with_one_cache_kind_are_left_alone(arch):
    decoder = onnx.load_from_string(decoder_bytes(arch))
    assert masked_linear(decoder) is decoder


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_prompts_past_the_window_prefill_in_chunks_and_keep_the_rings(arch):
    """A ring decoder given 30 tokens (window 8) prefills through the masked-linear form in
    chunks of 8, then 11 more (the rings' history goes into the scratch buffers), then decodes
    on its rings: every step's logits are transformers' on the whole sequence."""
    runner = OrtRunner(onnx.load_from_string(decoder_bytes(arch)))
    assert runner.spec.mixed and runner.spec.sliding_window == 8
    runner.start(1, 64)
    model = tiny_model(arch)
    prompt, more = [(7 * i + 3) % 500 for i in range(30)], [(5 * i + 1) % 500 for i in range(11)]
    held: list[int] = []
    for appended in (prompt, more, [42], [7]):
        held += appended
        got = runner.append([appended])[0]
        with torch.no_grad():
            want = model(torch.tensor([held])).logits[0, -1].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)  # float32 logits: error scales with size
    assert runner._prefill_session is not None  # the chunked path ran, not token by token
    assert runner.lengths == [len(held)]
