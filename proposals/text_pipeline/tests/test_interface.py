"""The WG interface in Python: config validation, factories, backends that agree."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from generator.errors import UsageError
from proposals.text_pipeline import (
    BeamSearchConfig,
    GenerationConfig,
    GenerationInput,
    SamplingConfig,
    StopCriteria,
    backend_names,
    create_pipeline,
    enumerate_devices,
)
from proposals.text_pipeline.families import tiny_model
from proposals.text_pipeline.folder import config_from_json, config_to_json, decoder_bytes, write_folder
from proposals.text_pipeline.generation import beam_search
from proposals.text_pipeline.runners import OrtRunner

BAD_CONFIGS = [
    (lambda: GenerationConfig(max_new_tokens=0), "max_new_tokens must be a positive integer"),
    (lambda: GenerationConfig(max_length=-3), "max_length must be a positive integer"),
    (lambda: GenerationConfig(min_new_tokens=5, max_new_tokens=2), "min_new_tokens=5 exceeds"),
    (lambda: GenerationConfig(eos_token_ids={-1}), "eos_token_ids must be non-negative"),
    (lambda: GenerationConfig(stop_strings="stop"), "stop_strings must be a collection"),
    (lambda: GenerationConfig(stop_strings={""}), "stop_strings must be non-empty"),
    (lambda: SamplingConfig(temperature=0.0), "temperature must be a finite float > 0"),
    (lambda: SamplingConfig(top_k=0), "top_k must be a positive integer or None"),
    (lambda: SamplingConfig(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (lambda: SamplingConfig(repetition_penalty=0), "repetition_penalty must be"),
    (lambda: SamplingConfig(rng_seed=-1), "rng_seed must be an integer"),
    (lambda: BeamSearchConfig(num_beams=0), "num_beams must be an integer >= 1"),
    (lambda: BeamSearchConfig(num_beams=2, num_return_sequences=3), "num_return_sequences must"),
    (lambda: BeamSearchConfig(num_beam_groups=2), "num_beam_groups=2 .* not implemented"),
    (
        lambda: GenerationConfig(
            sampling_config=SamplingConfig(do_sample=True),
            beam_search_config=BeamSearchConfig(num_beams=2),
        ),
        "beam sampling",
    ),
]


@pytest.mark.parametrize(("make", "message"), BAD_CONFIGS)
def test_invalid_config_is_a_one_line_usage_error(make, message):
    with pytest.raises(UsageError, match=message) as err:
        make()
    assert "\n" not in str(err.value)


def test_config_json_round_trip():
    config = GenerationConfig(
        max_new_tokens=9,
        eos_token_ids={0, 4},
        stop_strings={"\n\n"},
        sampling_config=SamplingConfig(do_sample=True, rng_seed=3, top_k=5),
        beam_search_config=BeamSearchConfig(stop_criteria=StopCriteria.NEVER),
    )
    assert config_from_json(config_to_json(config)) == config
    with pytest.raises(UsageError, match="bad generation_config"):
        config_from_json({"max_tokens": 3})


def test_factories_and_devices(tmp_path):
    assert backend_names() == [
        "onnxruntime",
        "onnxruntime-genai",
        "onnxruntime-paged",
        "openvino-genai",
        "transformers",
    ]
    assert [d.identifier for d in enumerate_devices("onnxruntime")] == ["CPU"]
    with pytest.raises(UsageError, match="unknown backend 'tensorrt'; valid: onnxruntime"):
        enumerate_devices("tensorrt")
    folder = write_folder("llama", tmp_path / "llama")
    with pytest.raises(UsageError, match="has no device 'NPU'; valid: CPU"):
        create_pipeline("onnxruntime", folder, "NPU")
    with pytest.raises(UsageError, match="not a text_pipeline model folder"):
        create_pipeline("onnxruntime", tmp_path)


PROMPTS = [GenerationInput("Attention reads the whole cache"), GenerationInput("The")]
SLIDING = {"mistral", "gemma2", "gemma3"}
# The agreement tests run every registered backend (a new one joins them by registering).
# A backend leaves a test only where it refuses the model, for the reason given here; the
# test checks that it does refuse, so an exclusion that starts to run fails and is dropped.
REFUSED = {
    "onnxruntime-paged": (SLIDING, "the paged rewrite needs a linear cache; a sliding window is a circular one"),
    "openvino-genai": (SLIDING, "transformers' sliding cache layer does not trace, so it cannot convert them"),
}
# Where a backend's float32 kernels break a near-tie the other way, its tokens are compared up
# to the tie. OLMo-2, second prompt, step 17: the float64 logits of tokens 246 and 323 differ
# by 1.4e-3, and OpenVINO picks 323.
NEAR_TIES = {("openvino-genai", "olmo2"): 16}


def registered_backends(
    folder: Path, arch: str, config: GenerationConfig, prompts=PROMPTS
) -> dict[str, list[tuple[int, ...]]]:
    """The tokens of every registered backend that runs ``arch``, per prompt; each backend
    that ``REFUSED`` lists for it must refuse it with a UsageError."""
    folder = write_folder(arch, folder / arch)
    tokens = {}
    for backend in backend_names():
        if arch in REFUSED.get(backend, ((), ""))[0]:
            with pytest.raises(UsageError):
                create_pipeline(backend, folder)
            continue
        pipeline = create_pipeline(backend, folder)
        pipeline.set_generation_config(config)
        tokens[backend] = [r.token_ids for r in pipeline.generate(prompts)]
    return tokens


def assert_agree(tokens: dict[str, list[tuple[int, ...]]], arch: str) -> None:
    """Every backend's tokens are transformers' (up to a recorded near-tie)."""
    expected = tokens["transformers"]
    for backend, got in tokens.items():
        upto = NEAR_TIES.get((backend, arch))
        assert [t[:upto] for t in got] == [t[:upto] for t in expected], backend


def test_every_backend_is_in_the_agreement_tests():
    """An exclusion names a registered backend; every other backend runs every model."""
    assert set(REFUSED) <= set(backend_names()) and {b for b, _ in NEAR_TIES} <= set(backend_names())
    assert "transformers" in backend_names()


@pytest.mark.parametrize("arch", ["llama", "mistral", "phi3", "olmo2", "granite"])
def test_every_backend_gives_the_same_tokens(tmp_path, arch):
    """onnxruntime (in-place cache), onnxruntime-genai (its own generator, right-padded
    batch), onnxruntime-paged, openvino-genai and transformers, on a batch of two prompts of
    different lengths."""
    tokens = registered_backends(tmp_path, arch, GenerationConfig(max_new_tokens=24))
    assert_agree(tokens, arch)
    assert set(tokens) == set(backend_names()) - {b for b, (archs, _) in REFUSED.items() if arch in archs}
    assert [len(t) for t in tokens["onnxruntime"]] == [24, 24]


def test_every_backend_agrees_on_a_decoder_with_a_nope_layer(tmp_path):
    """SmolLM3 (layer 1 without RoPE) on the same batch. Its short prompt's row reaches
    token 0 at its 5th token; onnxruntime-genai stops a row at the folder's EOS (0) whatever
    the pipeline's config says, so the config names that EOS for all of them."""
    tokens = registered_backends(tmp_path, "smollm3", GenerationConfig(max_new_tokens=24, eos_token_ids={0}))
    assert_agree(tokens, "smollm3")
    assert set(tokens) == set(backend_names())
    assert [len(t) for t in tokens["onnxruntime"]] == [24, 5]


@pytest.mark.parametrize("eos_at", [0, 1])
@pytest.mark.parametrize("stop", list(StopCriteria))
def test_beam_search_matches_transformers(stop, eos_at):
    """num_beams=4, num_return_sequences=3, length_penalty, and an EOS that the beams hit
    (at the first step, or at the second, where EARLY returns another set than the rest).
    With EOS at the first step a negative length_penalty favours short hypotheses, so the
    one-token EOS hypothesis is among those returned whatever the weights."""
    length_penalty = -1.0 if eos_at == 0 else 1.3
    model = tiny_model("qwen2")
    prompt = list(range(8, 16))
    with torch.no_grad():
        plain = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=12,
            num_beams=4,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=1,
        )
    eos = int(plain[0, len(prompt) + eos_at])
    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=12,
            num_beams=4,
            num_return_sequences=3,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=1,
            length_penalty=length_penalty,
            early_stopping=stop.value,
            output_scores=True,
            return_dict_in_generate=True,
        )
    expected = [[t for t in row[len(prompt) :].tolist() if t != 1] for row in out.sequences]
    config = GenerationConfig(
        max_new_tokens=12,
        eos_token_ids={eos},
        beam_search_config=BeamSearchConfig(
            num_beams=4, num_return_sequences=3, length_penalty=length_penalty, stop_criteria=stop
        ),
    )
    hyps = beam_search(OrtRunner(onnx.load_from_string(decoder_bytes("qwen2"))), prompt, config)
    assert [list(h.tokens) for h in hyps] == expected
    if eos_at == 0:
        assert any(h.tokens[-1] == eos for h in hyps)
    # A score sums log-probs over the tokens, so float32 rounding grows with it: relative tolerance.
    assert [h.score for h in hyps] == pytest.approx(out.sequences_scores.tolist(), rel=1e-5, abs=1e-4)


def test_ortgenai_refuses_prompts_longer_than_the_circular_window(tmp_path):
    pipeline = create_pipeline("onnxruntime-genai", write_folder("mistral", tmp_path / "m"))
    with pytest.raises(UsageError, match="do not fit the circular cache of sliding_window=16"):
        pipeline(GenerationInput("TensorScatter writes the new keys into the static buffer at"))


@pytest.mark.parametrize("arch", ["gemma2", "gemma3"])
def test_every_backend_runs_mixed_caches(tmp_path, arch):
    """Gemma (8-slot ring on layer 0, linear layer 1): onnxruntime-genai loads the sliding
    layer as a linear buffer read through a window mask, so a 23-token prompt, longer than
    the window, goes in one run; its tokens are transformers' (and the onnxruntime backend's).
    The paged and openvino-genai backends refuse sliding windows (``REFUSED``)."""
    prompts = [GenerationInput("TensorScatter writes the new keys into the static buffer at"), GenerationInput("The")]
    tokens = registered_backends(tmp_path, arch, GenerationConfig(max_new_tokens=24), prompts)
    assert_agree(tokens, arch)
    assert {"onnxruntime", "onnxruntime-genai", "transformers"} <= set(tokens)
    assert [len(t) for t in tokens["onnxruntime"]] == [24, 24]


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    return write_folder("llama", tmp_path_factory.mktemp("llama") / "llama")


@pytest.mark.parametrize("backend", backend_names())
def test_every_backend_refuses_a_prompt_that_leaves_no_room(llama_folder, backend):
    """Context 256: a 255-token prompt gets exactly one new token, a 256-token prompt (or a
    longer one) the same UsageError on every backend, before anything is generated."""
    pipeline = create_pipeline(backend, llama_folder)
    pipeline.set_generation_config(GenerationConfig(max_new_tokens=8))
    assert len(pipeline.encode(GenerationInput("a" * 255))) == 255  # "a" is one token
    result = pipeline(GenerationInput("a" * 255))
    assert len(result.token_ids) == 1 and result.finish_reason == "length"
    for length in (256, 662):
        message = f"the prompt has {length} tokens; the model's context is 256 tokens, so a prompt may have at most 255"
        with pytest.raises(UsageError, match=message):
            pipeline(GenerationInput("a" * length))
        with pytest.raises(UsageError, match=message):
            list(pipeline.stream(GenerationInput("a" * length)))
