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
from proposals.text_pipeline.build import decoder_spec, spec_from_model
from proposals.text_pipeline.families import ARCHITECTURES, tiny_config, tiny_model
from proposals.text_pipeline.folder import hf_step
from proposals.text_pipeline.runners import OrtRunner

# Two float32 engines (transformers, onnxruntime) round apart by an amount that grows with the
# values compared, so the tolerance is relative plus absolute.
FLOAT32 = {"rtol": 1e-5, "atol": 2e-5}

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
    modes = [
        onnx.helper.get_attribute_value(a)
        for n in decoder.graph.node
        if n.op_type == "TensorScatter"
        for a in n.attribute
        if a.name == "mode"
    ]
    # key and value scatter per layer, in layer order; Gemma mixes the two kinds
    kinds = [b"circular" if spec.layer_circular(i) else b"linear" for i in range(spec.num_layers)]
    assert modes == [kind for kind in kinds for _ in ("key", "value")]


def test_prefill_then_decode_matches_transformers(built):
    """Same graph for a 7-token prefill and two single-token steps; the in-place cache holds
    exactly transformers' keys and values after RoPE."""
    model, decoder = built
    runner = OrtRunner(decoder)
    runner.start(1, 32)
    prompt = [5, 9, 30, 41, 77, 100, 3]
    expected, cache, layers = hf_step(model, prompt)
    np.testing.assert_allclose(runner.append([prompt])[0], expected[-1], **FLOAT32)
    for token in (11, 200):
        expected, cache, layers = hf_step(model, [token], cache)
        np.testing.assert_allclose(runner.append([[token]])[0], expected[-1], **FLOAT32)
    n = len(prompt) + 2
    for name, want in (("key_1", layers[1][0]), ("value_0", layers[0][1])):
        got = _in_order(runner, name, n)
        kept = min(got.shape[1], want.shape[1])  # a sliding layer keeps only its last tokens
        np.testing.assert_allclose(got[:, -kept:], want[:, -kept:], **FLOAT32)


def _in_order(runner: OrtRunner, name: str, n: int) -> np.ndarray:
    """Sample 0's cached rows for the tokens 0..n-1 in token order; a circular buffer holds
    only the last ``L`` of them, token ``p`` at slot ``p % L``."""
    cache = runner.caches[name][0]
    slots = cache.shape[1]
    return cache[:, :n] if n <= slots else cache[:, [p % slots for p in range(n - slots, n)]]


@pytest.mark.parametrize(("arch", "shapes"), [("mistral", (16, 16)), ("gemma2", (8, 64)), ("gemma3", (8, 64))])
def test_circular_buffer_wraps_like_sliding_window(arch, shapes):
    """Mistral's window is 16, Gemma's 8 on its sliding layer 0 (layer 1 is full: a linear
    buffer of the requested 64): 30 tokens wrap the circular buffers; logits still match."""
    model = tiny_model(arch)
    runner = OrtRunner(build_decoder(model))
    runner.start(1, 64)
    tokens = [(7 * i + 3) % 500 for i in range(30)]
    got = runner.append([tokens])[0]
    with torch.no_grad():
        want = model(torch.tensor([tokens])).logits[0, -1].numpy()
    assert (runner.caches["key_0"].shape[2], runner.caches["key_1"].shape[2]) == shapes
    np.testing.assert_allclose(got, want, **FLOAT32)


@pytest.mark.parametrize(
    ("arch", "overrides", "feature"),
    [
        ("llama", {"hidden_act": "gelu"}, "hidden_act='gelu'"),
        (
            "llama",
            {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}},
            "rope_type='dynamic'",
        ),
        ("gemma2", {"hidden_activation": "gelu"}, "hidden_activation='gelu'"),
        ("gemma3", {"use_bidirectional_attention": True}, "use_bidirectional_attention=True; supported: causal"),
        (
            "gemma3",
            {"rope_parameters": {"full_attention": {"rope_type": "dynamic", "rope_theta": 1e6, "factor": 2.0}}},
            "rope_type='dynamic'",
        ),
        (  # Phi-3's long-context RoPE switches tables past original_max_position_embeddings
            "phi3",
            {
                "rope_parameters": {
                    "rope_type": "longrope",
                    "rope_theta": 1e4,
                    "short_factor": [1.0] * 8,
                    "long_factor": [2.0] * 8,
                },
                "original_max_position_embeddings": 64,
            },
            "rope_type='longrope' (its table follows the batch's longest position",
        ),
        (
            "llama",
            {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.3125}},
            "partial_rotary_factor=0.3125; supported: a factor in (0, 1] giving an even rotary dimension",
        ),
    ],
)
def test_unsupported_config_features_are_named(arch, overrides, feature):
    import transformers

    torch.manual_seed(0)
    config = tiny_config(arch, **overrides)
    model = getattr(transformers, ARCHITECTURES[arch][1])(config)
    with pytest.raises(UsageError, match=feature.replace("(", r"\(").replace("[", r"\[")) as err:
        build_decoder(model)
    assert "\n" not in str(err.value)


def test_malformed_no_rope_layers_are_named():
    """One 0/1 flag per layer; transformers itself does not check the list (set after init)."""
    model = tiny_model("smollm3")
    model.config.no_rope_layers = [1, 0, 1]
    with pytest.raises(UsageError, match=r"no_rope_layers=\[1, 0, 1\]; supported: one 0/1 flag per layer \(2 layers\)"):
        build_decoder(model)


def test_unsupported_architecture_is_named():
    import transformers

    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)
    with pytest.raises(UsageError, match="unsupported architecture 'gpt2'"):
        build_decoder(transformers.GPT2LMHeadModel(config))


def test_gemma3_with_vision_points_to_its_text_model():
    import transformers

    vision = {"hidden_size": 32, "num_hidden_layers": 1, "intermediate_size": 64, "num_attention_heads": 2}
    config = transformers.Gemma3Config(text_config={"hidden_size": 64, "num_hidden_layers": 1}, vision_config=vision)
    with pytest.raises(
        UsageError, match=r"unsupported architecture 'gemma3'; supported: .*gemma3_text.*\(Gemma 3 with vision"
    ):
        decoder_spec(config)


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
        # Qwen2's max_window_layers: layer 0 full (linear buffer), layer 1 sliding (ring)
        ("qwen2", {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 1}),
        ("gemma2", {"tie_word_embeddings": True, "query_pre_attn_scalar": 16}),
        ("gemma2", {"head_dim": 24, "sliding_window": 3}),  # head_dim != hidden / heads, as in Gemma 2 2B
        ("gemma3", {"rope_parameters": {"full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0}}}),
        ("phi3", {"sliding_window": 4}),  # every layer slides: the circular cache
        ("llama", {"rope_parameters": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5}}),
        ("olmo2", {"num_key_value_heads": 1}),  # MQA: the projection-wide k_norm spans one head
        ("granite", {"tie_word_embeddings": True}),  # the multiplier scales the gathered rows only
        ("smollm3", {"no_rope_layers": [0, 1]}),  # the first layer without RoPE
        # SmolLM3 slides its window on the NoPE layers only: circular and linear caches in one graph
        ("smollm3", {"use_sliding_window": True, "sliding_window": 4}),
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
    np.testing.assert_allclose(runner.append([tokens])[0], want, **FLOAT32)


def test_mixed_cache_spec_round_trips_and_needs_the_layer():
    """Gemma 2's spec names its linear layer in the metadata; a reader that asks for one
    cache shape for every layer is told which layers differ."""
    model = tiny_model("gemma2")
    decoder = build_decoder(model)
    spec = spec_from_model(decoder)
    assert spec == decoder_spec(model.config)
    assert (spec.sliding_window, spec.full_layers, spec.mixed) == (8, (1,), True)
    assert [spec.cache_shape(2, 32, i) for i in range(2)] == [(2, 2, 8, 16), (2, 2, 32, 16)]
    with pytest.raises(UsageError, match=r"mixes circular and linear caches \(full layers \[1\]\); cache_shape needs"):
        spec.cache_shape(2, 32)
    for key, value in (("full_layers", "1,x"), ("full_layers", "5")):
        broken = onnx.ModelProto()
        broken.CopyFrom(decoder)
        next(p for p in broken.metadata_props if p.key == key).value = value
        with pytest.raises(UsageError, match=f"decoder metadata full_layers='{value}'; expected comma-separated"):
            spec_from_model(broken)
