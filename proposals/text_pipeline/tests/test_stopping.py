"""eos_token_ids, stop_strings, min_new_tokens, max_new_tokens and max_length are honoured,
through the Pipeline on the onnxruntime backend: checked against a free run of the same
pipeline (self-consistency), and the token limits and EOS also against transformers
``generate`` with the same settings (Llama)."""

from __future__ import annotations

import pytest

from proposals.text_pipeline.config import GenerationConfig, GenerationInput
from proposals.text_pipeline.factory import create_pipeline
from proposals.text_pipeline.families import tiny_model
from proposals.text_pipeline.folder import write_folder

PROMPT = GenerationInput("The KV cache")


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    return create_pipeline("onnxruntime", write_folder("llama", tmp_path_factory.mktemp("llama")))


@pytest.fixture(scope="module")
def free_run(pipeline) -> list[int]:
    """32 greedy tokens with no EOS: the run every limit below is checked against."""
    pipeline.set_generation_config(GenerationConfig(max_new_tokens=32))
    return list(pipeline(PROMPT).token_ids)


def generate(pipeline, **config):
    pipeline.set_generation_config(GenerationConfig(**config))
    return pipeline(PROMPT)


def test_max_new_tokens(pipeline, free_run):
    result = generate(pipeline, max_new_tokens=7)
    assert list(result.token_ids) == free_run[:7]
    assert result.finish_reason == "length"


def test_max_length_counts_the_prompt(pipeline, free_run):
    prompt_len = len(pipeline.encode(PROMPT))
    result = generate(pipeline, max_length=prompt_len + 4, max_new_tokens=32)
    assert list(result.token_ids) == free_run[:4]


def test_eos_stops_at_first_occurrence(pipeline, free_run):
    eos = free_run[5]
    first = free_run.index(eos)
    result = generate(pipeline, max_new_tokens=32, eos_token_ids={eos, 511})
    assert list(result.token_ids) == free_run[: first + 1]
    assert result.finish_reason == "eos"


def test_min_new_tokens_bans_eos_until_reached(pipeline, free_run):
    eos = free_run[0]
    assert generate(pipeline, max_new_tokens=32, eos_token_ids={eos}).token_ids == (eos,)
    result = generate(pipeline, max_new_tokens=32, min_new_tokens=3, eos_token_ids={eos})
    assert len(result.token_ids) >= 3
    assert eos not in result.token_ids[:3]
    assert result.token_ids[:1] != (eos,)


def test_stop_string_cuts_text_after_it(pipeline, free_run):
    full = pipeline.decode(free_run)
    stop = full[10:13]
    result = generate(pipeline, max_new_tokens=32, stop_strings={stop})
    assert result.finish_reason == "stop_string"
    assert result.text.endswith(stop) and stop not in result.text[:-1]
    assert full.startswith(result.text)
    assert len(result.token_ids) < len(free_run)


def test_stream_yields_pieces_that_join_to_the_text(pipeline, free_run):
    pipeline.set_generation_config(GenerationConfig(max_new_tokens=32))
    pieces = list(pipeline.stream(PROMPT))
    assert len(pieces) > 5
    assert "".join(pieces) == pipeline.decode(free_run)


def test_max_length_at_the_prompt_length_generates_nothing(pipeline):
    prompt_len = len(pipeline.encode(PROMPT))
    result = generate(pipeline, max_length=prompt_len)
    assert result.token_ids == () and result.finish_reason == "length"


def hf_generate(prompt: list[int], **settings) -> tuple[int, ...]:
    """transformers ``generate`` (greedy) of the same tiny Llama: the new tokens."""
    import torch

    with torch.no_grad():
        out = tiny_model("llama").generate(
            input_ids=torch.tensor([prompt]), do_sample=False, pad_token_id=1, **settings
        )
    return tuple(out[0, len(prompt) :].tolist())


# (our GenerationConfig, transformers generate's keywords), given the free run, the prompt
# length and a token the run reaches after min_new_tokens when its first token is banned
LIMITS = {
    "max_new_tokens": lambda run, n, later: ({"max_new_tokens": 7}, {"max_new_tokens": 7, "eos_token_id": None}),
    "max_length": lambda run, n, later: ({"max_length": n + 4}, {"max_length": n + 4, "eos_token_id": None}),
    "eos_token_ids": lambda run, n, later: (
        {"max_new_tokens": 32, "eos_token_ids": {run[5], 511}},
        {"max_new_tokens": 32, "eos_token_id": [run[5], 511]},
    ),
    "min_new_tokens": lambda run, n, later: (
        {"max_new_tokens": 32, "min_new_tokens": 3, "eos_token_ids": {run[0], later}},
        {"max_new_tokens": 32, "min_new_tokens": 3, "eos_token_id": [run[0], later]},
    ),
}


@pytest.fixture(scope="module")
def later_token(pipeline, free_run) -> int:
    """A token that the run with ``free_run[0]`` banned for 3 steps emits after step 3 and
    not before: as an EOS it stops that run early, whatever the weights."""
    banned = generate(pipeline, max_new_tokens=32, min_new_tokens=3, eos_token_ids={free_run[0]}).token_ids
    return next(t for t in banned[3:] if t not in banned[:3] and t != free_run[0])


@pytest.mark.parametrize("limit", list(LIMITS))
def test_limits_match_transformers_generate(pipeline, free_run, later_token, limit):
    prompt = pipeline.encode(PROMPT)
    ours, theirs = LIMITS[limit](free_run, len(prompt), later_token)
    result = generate(pipeline, **ours)
    assert result.token_ids == hf_generate(prompt, **theirs)
    assert len(result.token_ids) < 32  # the limit under test stopped it, not the 32-token budget
    assert result.finish_reason == ("eos" if "eos_token_ids" in ours else "length")
