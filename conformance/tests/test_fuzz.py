"""Differential property tests: each standard GenAI op, drawn by hypothesis, against its
float64 reference on every runtime of the matrix. ``CONFORMANCE_FUZZ_EXAMPLES`` sets the
number of configurations per op (15 in ``make test``, 200 in ``make fuzz``)."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, given, settings

from conformance import harness
from conformance.examples import STRATEGIES

EXAMPLES = int(os.environ.get("CONFORMANCE_FUZZ_EXAMPLES", "15"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
MATRIX = harness.runtimes()
RESULTS = harness.Results()


@pytest.fixture(scope="module", autouse=True)
def _write_results():
    yield
    target = os.environ.get("CONFORMANCE_FUZZ_RESULTS")
    if target:
        RESULTS.write(harness.Path(target))
    least = int(os.environ.get("CONFORMANCE_FUZZ_MIN_CONFIGURATIONS", "0"))
    few = {op: n for op, n in RESULTS.configs.items() if n < least}
    assert not few, f"fewer than {least} distinct configurations: {few}; raise FUZZ_EXAMPLES"


@pytest.mark.parametrize("op", sorted(STRATEGIES))
def test_op_matches_reference_everywhere(op: str) -> None:
    @SETTINGS
    @given(STRATEGIES[op]())
    def check(example) -> None:
        failures = harness.check(example, MATRIX, RESULTS)
        assert not failures, "\n".join(failures)

    check()
