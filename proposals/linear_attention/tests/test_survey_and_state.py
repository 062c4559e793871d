"""The transformers coverage survey (gated-delta mixers converted and run against their
module) and the in-place state on onnxruntime."""

from __future__ import annotations

import importlib

import pytest

from generator.errors import UsageError
from proposals.linear_attention import inplace, survey

MIXERS = sorted(survey.gated_delta_mixers())


def test_the_gated_delta_families_the_issue_expects_are_discovered() -> None:
    assert {"qwen3_next", "qwen3_5", "qwen3_5_moe"} <= set(MIXERS)


@pytest.mark.parametrize("model_type", [*MIXERS, *sorted(survey.MAMBA2)])
def test_converted_mixer_matches_transformers_over_prefill_and_decode(model_type: str) -> None:
    check = survey.check_family(model_type)
    assert check.nodes["LinearAttention"] == 1 and check.nodes["Conv"] == 1
    assert check.max_abs_error <= 1e-5 + 1e-5 * check.max_abs_output, check


def test_an_unsupported_family_is_one_line_naming_the_valid_ones() -> None:
    with pytest.raises(UsageError) as err:
        survey.tiny_mixer("mamba")
    assert "valid: " in str(err.value) and "qwen3_next" in str(err.value) and "mamba2" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("family", survey.OTHERS, ids=lambda f: f.model_type)
def test_each_listed_family_names_a_mixer_transformers_has(family: survey.Family) -> None:
    module = importlib.import_module(f"transformers.models.{family.model_type}.modeling_{family.model_type}")
    assert hasattr(module, family.mixer), f"{family.model_type} has no {family.mixer}: update the survey"


def test_one_buffer_for_past_and_present_state_gives_the_plain_run_values() -> None:
    evidence = inplace.in_place_evidence(inplace.decode_layout(heads=2, head_dim=16))
    assert evidence.output_matches and evidence.state_matches
    assert evidence.shares_one_buffer


def test_the_profile_shows_the_function_body_onnxruntime_runs() -> None:
    profile = inplace.step_profile(inplace.decode_layout(heads=2, head_dim=8), steps=2)
    assert "Scan" in profile and "LinearAttention" not in profile


def test_the_scan_free_decode_step_equals_the_op() -> None:
    import numpy as np

    from generator.ort import session
    from proposals.linear_attention.build import gated_delta_decode_model, linear_attention_model

    layout = inplace.decode_layout(heads=3, head_dim=4)
    rng = np.random.RandomState(5)
    feeds = {**inplace.decode_feeds(layout, rng), "past_state": rng.randn(1, 3, 4, 4).astype(np.float32)}
    expected = session(linear_attention_model(layout)).run(None, feeds)
    got = session(gated_delta_decode_model(layout)).run(None, feeds)
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-6)
