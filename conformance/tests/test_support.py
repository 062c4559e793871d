"""The support page is computed from the committed fuzz results, zoo baseline and lowering results."""

from __future__ import annotations

import json

from conformance import support
from conformance.harness import RESULTS_JSON
from conformance.lowered import LOWERED_JSON


def test_each_op_table_has_a_zoo_row_from_the_baseline() -> None:
    page = support.support_page()
    results = json.loads(RESULTS_JSON.read_text())
    for op in results["ops"]:
        assert f"## {op}" in page
    assert page.count("| **zoo cases** (recorded baseline) |") == len(results["ops"])
    # the regression case's recorded onnxruntime divergence links its repro
    assert "[onnxruntime-attention-causal-past-offset](#onnxruntime-attention-causal-past-offset)" in page


def test_zoo_cells_count_the_cases_that_use_each_op() -> None:
    baseline = {
        "runtimes": {"rt": {"cells": {"t/a": {"status": "pass"}, "t/b": {"status": "mismatch", "reason": "x"}}}}
    }
    cells = support.zoo_cells(baseline, {"t/a": {"Attention"}, "t/b": {"Attention", "Add"}})
    assert cells["Attention"]["rt"] == {"counts": {"pass": 1, "divergence": 1}, "why": {"divergence": "x"}}
    assert cells["Add"]["rt"]["counts"] == {"divergence": 1}


def test_lowering_table_shows_original_and_lowered_rows() -> None:
    page = support.lowering_page()
    data = json.loads(LOWERED_JSON.read_text())
    for op in data["ops"]:
        assert f"| {op} |" in page and f"| {op}, **lowered** |" in page
