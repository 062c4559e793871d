"""Every causal-LM MoE block of the installed transformers: converted with parity against a
float64 copy of the block, or refused with its semantic reason."""

from __future__ import annotations

import numpy as np
import pytest

from generator.errors import UsageError
from generator.onnx_build import seeded
from generator.ort import session
from proposals.moe.hf import from_transformers
from proposals.moe.survey import (
    EXPECTED_REFUSALS,
    NO_STANDALONE_BLOCK,
    block_output64,
    committed,
    moe_model_types,
    survey,
    tiny_block,
)

MODEL_TYPES = sorted(moe_model_types())  # the committed survey: collection imports no modeling module


def test_the_committed_survey_is_what_transformers_holds() -> None:
    """Exact: a model type gained, lost, or whose class stopped importing shows here (rerun
    ``python -m proposals.moe.survey`` after a transformers upgrade and read the diff)."""
    fresh = survey()
    assert fresh.not_imported == committed().not_imported
    assert fresh.as_json() == committed().as_json()
    assert set(EXPECTED_REFUSALS) <= set(MODEL_TYPES)
    assert not set(NO_STANDALONE_BLOCK) & set(MODEL_TYPES)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_block_converts_or_is_refused_with_its_reason(model_type: str) -> None:
    block = tiny_block(model_type, seed=5)
    if model_type in EXPECTED_REFUSALS:
        with pytest.raises(UsageError) as err:
            from_transformers(block)
        assert EXPECTED_REFUSALS[model_type] in str(err.value)
        return
    runner = session(from_transformers(block), threads=1)
    for shape in ((2, 5, 16), (1, 1, 16)):
        x = seeded(6).randn(*shape).astype(np.float32)
        expected = block_output64(block, x.astype(np.float64))
        got = runner.run(None, {"hidden_states": x})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-5 * max(1.0, float(np.abs(expected).max())))
