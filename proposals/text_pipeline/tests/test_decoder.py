"""build_decoder: standard ops only, one graph for prefill and decode, transformers parity,
clear errors for what it does not support."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from generator.errors import UsageError
from generator.onnx_build import PROPOSAL_DOMAIN
from proposals.text_pipeline import build_decoder
from proposals.text_pipeline.build import spec_from_model
from proposals.text_pipeline.families import ARCHITECTURES, tiny_config, tiny_model
from proposals.text_pipeline.folder import hf_step
from proposals.text_pipeline.runners import OrtRunner

ARCHS = sorted(ARCHITECTURES)


@pytest.fixture(scope="module", params=ARCHS)
def built(request):
    model = tiny_model(request.param)
    return model, build_decoder(model)


def test_standard_ops_at_opset_24(built):
    _, decoder = built
    moe = {PROPOSAL_DOMAIN: 1} if decoder.functions else {}  # MoE decoders: the MoE function op
    assert {o.domain: o.version for o in decoder.opset_import} == {"": 24, **moe}
    ops = {n.op_type for n in decoder.graph.node}
    assert {"RMSNormalization", "RotaryEmbedding", "TensorScatter", "Attention"} <= ops
    assert all(n.domain == "" or (n.domain, n.op_type) == (PROPOSAL_DOMAIN, "MoE") for n in decoder.graph.node)
    onnx.checker.check_model(decoder, full_check=True)
    assert len(decoder.SerializeToString()) < 1 << 20


def test_attention_is_causal_gqa_with_nonpad(built):
    _, decoder = built
    spec = spec_from_model(decoder)
    for node in (n for n in decoder.graph.node if n.op_type == "Attention"):
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert attrs["is_causal"] == 1
        # 4-D Q/K/V carry their head counts; q_num_heads/kv_num_heads are for 3-D inputs only
        assert "q_num_heads" not in attrs and "kv_num_heads" not in attrs
        assert node.input[6]  # nonpad_kv_seqlen is always fed
    modes = {
        onnx.helper.get_attribute_value(a)
        for n in decoder.graph.node
        if n.op_type == "TensorScatter"
        for a in n.attribute
        if a.name == "mode"
    }
    assert modes == ({b"circular"} if spec.circular else {b"linear"})


def test_prefill_then_decode_matches_transformers(built):
    """Same graph for a 7-token prefill and two single-token steps; the in-place cache holds
    exactly transformers' keys and values after RoPE."""
    model, decoder = built
    runner = OrtRunner(decoder)
    runner.start(1, 32)
    prompt = [5, 9, 30, 41, 77, 100, 3]
    expected, cache, layers = hf_step(model, prompt)
    np.testing.assert_allclose(runner.append([prompt])[0], expected[-1], atol=2e-5)
    for token in (11, 200):
        expected, cache, layers = hf_step(model, [token], cache)
        np.testing.assert_allclose(runner.append([[token]])[0], expected[-1], atol=2e-5)
    n = len(prompt) + 2
    np.testing.assert_allclose(runner.caches["key_1"][0, :, :n], layers[1][0], atol=2e-5)
    np.testing.assert_allclose(runner.caches["value_0"][0, :, :n], layers[0][1], atol=2e-5)


def test_circular_buffer_wraps_like_sliding_window():
    """Mistral's window is 16: 30 tokens wrap the circular buffer; logits still match."""
    model = tiny_model("mistral")
    runner = OrtRunner(build_decoder(model))
    runner.start(1, 64)
    tokens = [(7 * i + 3) % 500 for i in range(30)]
    got = runner.append([tokens])[0]
    with torch.no_grad():
        want = model(torch.tensor([tokens])).logits[0, -1].numpy()
    assert runner.caches["key_0"].shape[2] == 16
    np.testing.assert_allclose(got, want, atol=2e-5)


@pytest.mark.parametrize(
    ("arch", "overrides", "feature"),
    [
        ("llama", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
        (
            "llama",
            {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
            "rope_type='dynamic'",
        ),
        (
            "qwen2",
            {"use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1},
            "layer_types mixing full and sliding attention",
        ),
    ],
)
def test_unsupported_config_features_are_named(arch, overrides, feature):
    import transformers

    torch.manual_seed(0)
    config = tiny_config(arch, **overrides)
    model = getattr(transformers, ARCHITECTURES[arch][1])(config)
    with pytest.raises(UsageError, match=feature.replace("(", r"\(").replace("[", r"\[")):
        build_decoder(model)


def test_unsupported_architecture_is_named():
    import transformers

    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)
    with pytest.raises(UsageError, match="unsupported architecture 'gpt2'"):
        build_decoder(transformers.GPT2LMHeadModel(config))


@pytest.mark.parametrize("make", [lambda: None, lambda: transformers_model("LlamaModel")], ids=["None", "LlamaModel"])
def test_not_a_causal_lm_is_named(make):
    """A base model (no lm_head) or any other object: one line naming what is expected."""
    with pytest.raises(UsageError, match=r"expects a transformers \*ForCausalLM of a supported architecture") as err:
        build_decoder(make())
    assert "LlamaForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM, MistralForCausalLM" in str(err.value)
    assert f"got {type(make()).__name__}" in str(err.value)
    assert "\n" not in str(err.value)


def transformers_model(class_name: str):
    import transformers

    torch.manual_seed(0)
    return getattr(transformers, class_name)(tiny_config("llama"))


def test_inplace_runner_aliases_past_and_present():
    """The present outputs ORT returns are the numpy cache buffers themselves: no copy."""
    runner = OrtRunner(build_decoder(tiny_model("llama")))
    runner.start(2, 16)
    runner.append([[5, 6, 7], [8, 9]])
    runner.append([[10], [11]])
    binding = runner._binding(slice(None))
    outputs = binding.get_outputs()  # logits first, then present_key_0, present_value_0, ...
    for value, cache in zip(outputs[1:], runner.caches.values(), strict=True):
        assert value.data_ptr() == cache.ctypes.data
    assert np.abs(runner.caches["key_0"][:, :, :3]).min() > 0  # both rows written in place


@pytest.mark.parametrize(
    ("arch", "overrides"),
    [
        ("llama", {"attention_bias": True, "mlp_bias": True}),
        ("llama", {"tie_word_embeddings": True}),
        ("llama", {"num_key_value_heads": 1}),  # MQA
        ("llama", {"rope_parameters": {"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0}}),
        ("qwen2", {"num_key_value_heads": 4}),  # plain MHA
        (
            "llama",
            {
                "rope_parameters": {
                    "rope_type": "yarn",
                    "rope_theta": 1e4,
                    "factor": 4.0,
                    "original_max_position_embeddings": 64,
                }
            },
        ),
        (
            "llama",
            {
                "rope_parameters": {
                    "rope_type": "llama3",
                    "rope_theta": 5e5,
                    "factor": 8.0,
                    "low_freq_factor": 1.0,
                    "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 64,
                }
            },
        ),
    ],
)
def test_config_variants_match_transformers(arch, overrides):
    import transformers

    torch.manual_seed(5)
    model = getattr(transformers, ARCHITECTURES[arch][1])(tiny_config(arch, **overrides)).eval()
    runner = OrtRunner(build_decoder(model))
    runner.start(1, 16)
    tokens = [3, 50, 7, 400, 12]
    with torch.no_grad():
        want = model(torch.tensor([tokens])).logits[0, -1].numpy()
    np.testing.assert_allclose(runner.append([tokens])[0], want, atol=2e-5)
