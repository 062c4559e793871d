"""Hybrid decoders (Qwen3.5): gated-delta layers as LinearAttention-27 with their conv and
recurrent states carried as graph inputs and outputs, attention layers on the KV cache; the
same builder, runner and generation loop as every other family."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from generator.errors import UsageError
from proposals.text_pipeline.__main__ import main as cli
from proposals.text_pipeline.build import decoder_spec, spec_from_model
from proposals.text_pipeline.cache_formats import cache_buffers, cache_bytes_per_token
from proposals.text_pipeline.config import GenerationConfig, GenerationInput
from proposals.text_pipeline.factory import create_pipeline
from proposals.text_pipeline.families import tiny_config, tiny_model
from proposals.text_pipeline.folder import decoder_bytes, write_folder
from proposals.text_pipeline.report import PROMPTS, greedy, hf_greedy
from proposals.text_pipeline.runners import OrtRunner
from proposals.text_pipeline.tokenizer import load_tokenizer

ARCH = "qwen3_5"
NEW_TOKENS = 64
FLOAT32 = {"rtol": 1e-5, "atol": 2e-5}  # two float32 engines: relative plus absolute


@pytest.fixture(scope="module")
def hybrid():
    """The tiny model, its decoder, the prompts (5 and 23 tokens) and transformers' greedy tokens."""
    model = tiny_model(ARCH)
    decoder = onnx.load_from_string(decoder_bytes(ARCH))
    prompts = [load_tokenizer().encode(p).ids for p in PROMPTS]
    return model, decoder, prompts, hf_greedy(model, prompts, NEW_TOKENS)  # generate, left-padded batch


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(ARCH, tmp_path_factory.mktemp("hybrid") / ARCH)


def test_layers_carry_their_own_state(hybrid):
    """Layers 0 and 2 are gated-delta (conv + recurrent state), layer 1 attention (K/V cache);
    standard ops plus LinearAttention-27, so the graph is opset 27."""
    _, decoder, _, _ = hybrid
    assert {o.domain: o.version for o in decoder.opset_import} == {"": 27}
    onnx.checker.check_model(decoder, full_check=True)
    spec = spec_from_model(decoder)
    assert spec.recurrent_layers == (0, 2) and spec.attention_layers == (1,)
    names = [i.name for i in decoder.graph.input]
    assert names[2:] == ["past_conv_0", "past_state_0", "past_key_1", "past_value_1", "past_conv_2", "past_state_2"]
    assert [o.name for o in decoder.graph.output][1:] == [n.replace("past", "present") for n in names[2:]]
    ops = [n.op_type for n in decoder.graph.node]
    assert (ops.count("LinearAttention"), ops.count("TensorScatter"), ops.count("Attention")) == (2, 2, 1)
    buffers = {b.name: b for b in cache_buffers(decoder)}  # the runner allocates what these say
    assert buffers["conv_0"].shape(2, 99) == (2, 2 * 2 * 16 + 4 * 16, 3)  # [q | k | v] channels, K - 1
    assert buffers["state_2"].shape(2, 99) == (2, 4, 16, 16)  # (B, H_v, d_k, d_v)
    assert cache_bytes_per_token(decoder) == 2 * 2 * 16 * 4  # K and V of the one attention layer
    rules = {
        onnx.helper.get_attribute_value(a) for n in decoder.graph.node for a in n.attribute if a.name == "update_rule"
    }
    assert rules == {b"gated_delta"}


def test_greedy_batch_is_token_identical(hybrid):
    """Prompts of different lengths: each is prefilled alone (no padding enters a state), then
    the batch decodes one token per sequence; in-place and copying runners alike."""
    _, decoder, prompts, expected = hybrid
    assert [len(p) for p in prompts] == [5, 23] and all(len(row) == NEW_TOKENS for row in expected)
    assert greedy(OrtRunner(decoder), prompts, NEW_TOKENS) == expected
    assert greedy(OrtRunner(decoder, inplace=False), prompts, NEW_TOKENS) == expected


def test_qwen3_next_greedy_batch_is_token_identical(hybrid):
    """Qwen3-Next through the same builder: its mixer's fused, per-key-head grouped projections
    and its MoE MLPs (the MoE proposal's function op, with the gated shared expert)."""
    _, _, prompts, _ = hybrid
    decoder = onnx.load_from_string(decoder_bytes("qwen3_next"))
    assert [n.op_type for n in decoder.graph.node].count("MoE") == 3
    assert greedy(OrtRunner(decoder), prompts, NEW_TOKENS) == hf_greedy(tiny_model("qwen3_next"), prompts, NEW_TOKENS)


def test_states_are_transformers_cache(hybrid):
    """After a prefill and one decode step the bound buffers hold transformers' recurrent state
    and the last K-1 conv inputs (its conv state keeps K; the oldest is never read again)."""
    model, decoder, prompts, _ = hybrid
    runner = OrtRunner(decoder)
    runner.start(1, 32)
    runner.append([prompts[1]])
    logits = runner.append([[7]])[0]
    with torch.no_grad():
        out = model(input_ids=torch.tensor([prompts[1]]), use_cache=True)
        out = model(input_ids=torch.tensor([[7]]), cache=out.cache, use_cache=True)
    np.testing.assert_allclose(logits, out.logits[0, -1].numpy(), **FLOAT32)
    for layer in (0, 2):
        state = out.cache.get_recurrent_state(layer, state_idx=0).numpy()
        conv = out.cache.get_conv_state(layer, state_idx=0).numpy()[..., 1:]
        np.testing.assert_allclose(runner.caches[f"state_{layer}"], state, **FLOAT32)
        np.testing.assert_allclose(runner.caches[f"conv_{layer}"], conv, **FLOAT32)


def test_create_pipeline_onnxruntime(hybrid, folder):
    """The model folder behind ``create_pipeline``: the WG pipeline gives transformers' tokens."""
    _, _, _, expected = hybrid
    pipeline = create_pipeline("onnxruntime", folder)
    pipeline.set_generation_config(GenerationConfig(max_new_tokens=NEW_TOKENS))
    results = pipeline.generate([GenerationInput(p) for p in PROMPTS])
    assert [list(r.token_ids) for r in results] == expected


@pytest.mark.parametrize("backend", ["onnxruntime-paged", "onnxruntime-genai", "openvino-genai"])
def test_attention_only_backends_refuse_in_one_line(folder, backend, capsys):
    """The paged backend pages K/V (a recurrent state has no pages, no prefix to share); ORT
    GenAI binds past_key/past_value only; OpenVINO cannot convert the gated-delta layers."""
    with pytest.raises(UsageError, match=r"backend .*; this qwen3_5_text decoder's layers 0, 2 .*; valid: the onnx"):
        create_pipeline(backend, folder)
    assert cli(["hi", "--backend", backend, "--model-dir", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: the {backend} backend ")


@pytest.mark.parametrize(
    ("arch", "layer_types", "message"),
    [
        (
            ARCH,
            ["linear_attention", "mamba", "full_attention"],
            "layer_types ['mamba']; supported: full_attention, sliding_attention, linear_attention",
        ),
        (ARCH, ["linear_attention"] * 3, "every layer is recurrent; supported: at least one attention layer"),
        ("llama", ["linear_attention", "full_attention"], "supported in the hybrid decoders: qwen3_5_text"),
    ],
)
def test_unsupported_layer_types_are_named(arch, layer_types, message):
    config = tiny_config(arch)
    config.layer_types = layer_types  # set after construction: transformers checks the names itself
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("]", r"\]")) as err:
        decoder_spec(config)
    assert "\n" not in str(err.value)


def test_unsupported_hybrid_family_is_named():
    """OLMo-Hybrid's gated-delta layers convert (linear_attention's survey), but its decoder is
    not one the builder knows: the architecture is refused, naming the supported ones."""
    import transformers

    config = transformers.OlmoHybridConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2)
    with pytest.raises(
        UsageError, match="unsupported architecture 'olmo_hybrid'; supported: .*qwen3_5_text, qwen3_next"
    ):
        decoder_spec(config)
