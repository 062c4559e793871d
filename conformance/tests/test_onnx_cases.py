"""onnx's own backend cases on the matrix (conformance/onnx_cases.py): a quick sample reruns
against the committed statuses, every committed failure is explained, and the support page's
table is built from the committed file. The full run is `make onnx-cases`."""

from __future__ import annotations

from fnmatch import fnmatch

import pytest

from conformance import onnx_cases
from conformance.repros import ALL as REPROS
from conformance.support import onnx_cases_markdown
from generator.runtimes import OnnxRuntime, ReferenceRuntime

COMMITTED = onnx_cases.load()
SLUGS = {r.slug for r in REPROS}


def test_the_committed_run_covers_every_op_and_runtime() -> None:
    ops = {entry["op"].split("-")[0] for entry in COMMITTED["cases"].values()}
    assert ops == set(onnx_cases.OPS)
    assert len(COMMITTED["cases"]) == len(onnx_cases.node_cases())
    columns = {rt for entry in COMMITTED["cases"].values() for rt in entry["cells"]}
    assert columns == set(COMMITTED["runtimes"]) and len(columns) >= 7


@pytest.mark.parametrize("ops", [("TensorScatter", "RotaryEmbedding", "SwiGLU")], ids=["sample"])
def test_a_sample_reruns_to_the_committed_statuses(ops) -> None:
    results = onnx_cases.collect([ReferenceRuntime(), OnnxRuntime()], ops)
    assert results["cases"], "no case picked"
    assert onnx_cases.differences(results, COMMITTED) == []


def test_every_committed_failure_is_explained_and_every_explanation_used() -> None:
    failing = [
        (name, rt, cell)
        for name, entry in COMMITTED["cases"].items()
        for rt, cell in entry["cells"].items()
        if cell["status"] in ("mismatch", "error")
    ]
    assert failing
    for name, rt, cell in failing:
        assert cell.get("known") == onnx_cases.known(name, rt), (name, rt)
        assert cell["known"] in SLUGS or " " in cell["known"], f"{cell['known']} is neither a repro nor a reason"
    for case, runtime, _why in onnx_cases.KNOWN:
        assert any(fnmatch(n, case) and fnmatch(r, runtime) for n, r, _ in failing), f"stale KNOWN row {case}"


def test_the_page_table_counts_and_links() -> None:
    data = {
        "runtimes": {"a": "1", "b": "2"},
        "cases": {
            "test_x": {
                "op": "Attention-23",
                "cells": {"a": {"status": "pass"}, "b": {"status": "unsupported", "detail": "no"}},
            },
            "test_y": {
                "op": "Attention-23",
                "cells": {
                    "a": {"status": "mismatch", "detail": "d", "known": "tract-attention25-window-ignored"},
                    "b": {"status": "unsupported", "detail": "no"},
                },
            },
        },
    }
    page = onnx_cases_markdown(data)
    assert "| Attention-23 (2) |" in page
    assert "[tract-attention25-window-ignored](#tract-attention25-window-ignored)" in page
    assert "| `test_y` | a | divergence |" in page and "test_x` |" not in page
    assert "1. no" in page


def _ulps(actual, expected) -> float:
    """Largest difference in units of the expected value's last place (its own dtype's spacing)."""
    import numpy as np

    spacing = np.abs(np.spacing(expected.astype(np.float32)).astype(np.float64))
    step = spacing * (2.0 ** (np.finfo(np.float32).nmant - _mantissa_bits(expected.dtype)))
    return float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64)) / step))


def _mantissa_bits(dtype) -> int:
    return {"float16": 10, "bfloat16": 7}[dtype.name]


@pytest.mark.parametrize(
    ("case", "runtime"),
    [("test_attention_4d_causal_fp16", OnnxRuntime), ("test_attention_4d_causal_bf16", None)],
    ids=["onnxruntime-fp16", "openvino-bf16"],
)
def test_rounding_explanations_are_one_step(case: str, runtime) -> None:
    """The KNOWN rows that say 'rounding only' hold: at most two steps of the output's dtype."""
    import numpy as np

    from generator.runtimes import OpenVinoRuntime

    rt = (runtime or OpenVinoRuntime)()
    assert "rounding only" in onnx_cases.known(case, rt.name)
    (picked,) = [c for c in onnx_cases.node_cases(("Attention",)) if c.name == case]
    (inputs, (expected,)) = picked.data_sets[0]
    graph = picked.model.graph
    got = rt.load_model(picked.model)({i.name: np.asarray(a) for i, a in zip(graph.input, inputs, strict=True)})
    assert 0 < _ulps(got[graph.output[0].name], np.asarray(expected)) <= 2.0
