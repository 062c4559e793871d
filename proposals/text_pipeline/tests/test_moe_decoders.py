"""MoE decoders (Qwen3-MoE, Mixtral): every layer's MLP is one node of the MoE proposal's
function op. On onnxruntime, with the body inlined and with ``com.microsoft.MoE``
substituted, and on onnxruntime-genai, greedy generation is token-identical to
transformers ``generate`` for 64 tokens on a batch of prompts of different lengths."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from generator.errors import UsageError
from generator.onnx_build import PROPOSAL_DOMAIN
from proposals.moe.ort_moe import ORT_DOMAIN
from proposals.text_pipeline import build_decoder
from proposals.text_pipeline.build import spec_from_model
from proposals.text_pipeline.config import GenerationConfig, GenerationInput
from proposals.text_pipeline.factory import Device, create_pipeline
from proposals.text_pipeline.families import MOE_ARCHITECTURES, tiny_config, tiny_model
from proposals.text_pipeline.folder import decoder_bytes, write_folder
from proposals.text_pipeline.moe_mlp import for_onnxruntime
from proposals.text_pipeline.report import PROMPTS, greedy, hf_greedy
from proposals.text_pipeline.runners import OrtRunner
from proposals.text_pipeline.tokenizer import load_tokenizer

MOE = sorted(MOE_ARCHITECTURES)
NEW_TOKENS = 64


@pytest.fixture(scope="module", params=MOE)
def built(request):
    arch = request.param
    model = tiny_model(arch)
    prompts = [load_tokenizer().encode(p).ids for p in PROMPTS]
    return arch, model, onnx.load_from_string(decoder_bytes(arch)), prompts, hf_greedy(model, prompts, NEW_TOKENS)


def _moe_nodes(model: onnx.ModelProto, domain: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if (n.domain, n.op_type) == (domain, "MoE")]


def test_every_layer_mlp_is_the_moe_function_op(built):
    _, _, decoder, _, _ = built
    layers = spec_from_model(decoder).num_layers
    assert {o.domain: o.version for o in decoder.opset_import} == {"": 24, PROPOSAL_DOMAIN: 1}
    assert len(_moe_nodes(decoder, PROPOSAL_DOMAIN)) == layers
    assert [f.name for f in decoder.functions][-1] == "MoE"
    assert {o.domain: o.version for f in decoder.functions for o in f.opset_import} == {"": 24, PROPOSAL_DOMAIN: 1}
    onnx.checker.check_model(decoder, full_check=True)
    assert len(decoder.SerializeToString()) < 1 << 20


def test_inlined_body_is_standard_ops(built):
    _, _, decoder, _, _ = built
    inlined = for_onnxruntime(decoder, "inline")
    assert not inlined.functions and {n.domain for n in inlined.graph.node} == {""}
    onnx.checker.check_model(inlined, full_check=True)


def test_substitution_puts_com_microsoft_moe_in_every_layer(built):
    _, _, decoder, _, _ = built
    substituted = for_onnxruntime(decoder, "substitute")
    assert not substituted.functions
    assert len(_moe_nodes(substituted, ORT_DOMAIN)) == spec_from_model(decoder).num_layers
    assert not _moe_nodes(substituted, PROPOSAL_DOMAIN)


@pytest.mark.parametrize("moe", ["inline", "substitute"])
def test_greedy_64_tokens_are_token_identical(built, moe):
    """Prompts of 5 and 23 tokens in one batch; transformers generate on the left-padded batch."""
    _, _, decoder, prompts, expected = built
    assert [len(p) for p in prompts] == [5, 23] and all(len(row) == NEW_TOKENS for row in expected)
    assert greedy(OrtRunner(for_onnxruntime(decoder, moe)), prompts, NEW_TOKENS) == expected


def test_backends_take_the_moe_option(built, tmp_path):
    """The onnxruntime backend with either device setting ``moe``, onnxruntime-genai 0.18
    (which runs the model with its functions) and the transformers backend (the model
    rebuilt from pipeline.json's recipe) give transformers' tokens."""
    arch, _, _, prompts, expected = built
    folder = write_folder(arch, tmp_path / arch)
    for backend, device in [
        ("onnxruntime", Device("CPU", {"moe": "substitute"})),
        ("onnxruntime", None),
        ("onnxruntime-genai", None),
        ("transformers", None),
    ]:
        pipeline = create_pipeline(backend, folder, device)
        pipeline.set_generation_config(GenerationConfig(max_new_tokens=NEW_TOKENS))  # no EOS: all 64
        got = pipeline.generate([GenerationInput(p) for p in PROMPTS])
        assert [list(r.token_ids) for r in got] == expected, (backend, device)


def test_bad_moe_mode_is_named(tmp_path):
    folder = write_folder("qwen3_moe", tmp_path / "m")
    with pytest.raises(UsageError, match="unknown moe mode 'fused'; valid: inline, substitute"):
        create_pipeline("onnxruntime", folder, Device("CPU", {"moe": "fused"}))


def test_dense_layers_beside_moe_layers():
    """Qwen3-MoE's mlp_only_layers: layer 0 dense SwiGLU, layer 1 the MoE op."""
    model = tiny_model("qwen3_moe", mlp_only_layers=[0])
    decoder = build_decoder(model)
    assert len(_moe_nodes(decoder, PROPOSAL_DOMAIN)) == 1
    tokens = [3, 50, 7, 400, 12]
    with torch.no_grad():
        want = model(torch.tensor([tokens])).logits[0, -1].numpy()
    for moe in ("inline", "substitute"):
        runner = OrtRunner(for_onnxruntime(decoder, moe))
        runner.start(1, 16)
        np.testing.assert_allclose(
            runner.append([tokens])[0], want, rtol=1e-5, atol=2e-5
        )  # float32 logits: error scales with size


def test_moe_block_the_op_cannot_express_is_named():
    """Router logits soft-capped are not the op's routing: the MoE proposal's refusal."""
    import transformers

    config = tiny_config("qwen3_moe")
    config._experts_implementation = "eager"
    model = transformers.Qwen3MoeForCausalLM(config).eval()
    model.model.layers[0].mlp.gate.weight.data.zero_()  # every expert ties: no single top-k
    with pytest.raises(UsageError, match="not supported by MoE|cannot represent this router"):
        build_decoder(model)


def test_gpt_oss_is_refused_naming_the_supported():
    """GPT-OSS (attention sinks, alternating sliding and full layers) is not built: one line."""
    import transformers

    config = transformers.GptOssConfig(
        hidden_size=64, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, vocab_size=512, num_local_experts=4, num_experts_per_tok=2,
    )  # fmt: skip
    with pytest.raises(UsageError, match="unsupported architecture 'gpt_oss'; supported: .*qwen3_moe, mixtral") as err:
        build_decoder(transformers.GptOssForCausalLM(config))
    assert "\n" not in str(err.value)


def test_retarget_refuses_an_operator_whose_signature_changed():
    """Clip-6 takes min/max as attributes, Clip-11 on as inputs: a body using it is not relabelled."""
    from onnx import helper

    from proposals.text_pipeline.moe_mlp import retarget

    clip = helper.make_node("Clip", ["x"], ["y"], min=0.0, max=1.0)
    body = helper.make_function("test", "F", ["x"], ["y"], [clip], [helper.make_opsetid("", 6)])
    assert retarget([body], 6)[0].opset_import[0].version == 6
    with pytest.raises(NotImplementedError, match="Clip-13 differs from Clip-6"):
        retarget([body], 24)
