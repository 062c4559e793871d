"""The upstream-ready cases (upstream/node/) through onnx's case machinery: each ``export_*``
says which gap it closes, its model passes onnx's full check, onnx's ReferenceEvaluator gives
its expected outputs within the case's own tolerances (as onnx's backend Runner compares), and
those expected outputs agree with this project's float64 references. Run against the pinned
onnx here, and against onnx-weekly by ``make upstream`` (GroupedMatMul-29 only there)."""

from __future__ import annotations

import importlib
import inspect

import numpy as np
import onnx
import pytest
from onnx.backend.test.case.base import Base
from onnx.reference import ReferenceEvaluator

from conformance import reference
from upstream.cases import MODULES, collect, supported


def _needs(module: str) -> None:
    if not supported(module):
        pytest.skip(f"onnx {onnx.__version__} has no {MODULES[module]}: run by make upstream (onnx-weekly)")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_export_names_the_gap_it_closes(module: str) -> None:
    _needs(module)
    collect(module)
    classes = [c for c in vars(importlib.import_module(module)).values() if inspect.isclass(c) and Base in c.__mro__]
    exports = [f for c in classes if c is not Base for n, f in vars(c).items() if n.startswith("export")]
    assert exports
    for export in exports:
        doc = inspect.getdoc(export.__func__)
        assert doc and doc.startswith("Gap: ") and "\n" not in doc, export.__func__.__qualname__


@pytest.mark.parametrize("module", sorted(MODULES))
def test_cases_pass_onnx_checker_and_reference(module: str) -> None:
    _needs(module)
    cases = collect(module)
    assert cases
    for case in cases:
        onnx.checker.check_model(case.model, full_check=True)
        (inputs, outputs) = case.data_sets[0]
        names = [i.name for i in case.model.graph.input if i.name not in {t.name for t in case.model.graph.initializer}]
        got = ReferenceEvaluator(case.model).run(None, dict(zip(names, inputs, strict=True)))
        for actual, expected in zip(got, outputs, strict=True):
            np.testing.assert_allclose(actual, expected, rtol=case.rtol, atol=case.atol, err_msg=case.name)


def _case(module: str, name: str):
    return next(c for c in collect(module) if c.name == name)


def test_tensorscatter_cases_agree_with_the_project_reference() -> None:
    """The case file's own numpy helper against conformance.reference (written from the spec)."""
    mode = {"test_tensorscatter_circular_batch_larger_than_cache": "circular"}
    for case in collect("upstream.node.tensorscatter"):
        node = case.model.graph.node[0]
        axis = next((a.i for a in node.attribute if a.name == "axis"), -2)
        (inputs, (expected,)) = case.data_sets[0]
        past, update, *indices = (np.asarray(a, np.float64) if a.dtype.kind == "f" else a for a in inputs)
        kind = mode.get(case.name, "linear")
        ours = reference.tensor_scatter(past, update, *(indices or [None]), axis=axis, mode=kind)
        np.testing.assert_array_equal(ours.astype(expected.dtype), expected, err_msg=case.name)


def test_batch_larger_than_cache_catches_the_onnx_8353_bug() -> None:
    """The case fails the pre-#8353 reference, which took every index modulo max_sequence_length
    (repros/onnx-tensorscatter-circular-batch-wrap), so batch 2 of 3 landed on batch 0."""
    case = _case("upstream.node.tensorscatter", "test_tensorscatter_circular_batch_larger_than_cache")
    (past, update, indices), (expected,) = case.data_sets[0]
    assert past.shape[0] > past.shape[2]
    buggy = past.copy()
    for b in range(past.shape[0]):
        buggy[tuple(np.mod((b, 0, int(indices[b])), past.shape[2]))] = update[b, 0, 0]
    assert not np.allclose(buggy, expected)


def test_chain_agrees_with_the_project_reference() -> None:
    case = _case("upstream.node.tensorscatter_attention", "test_tensorscatter_into_attention")
    (q, k, v, past_k, past_v, indices), (y, present_k, present_v) = case.data_sets[0]
    ours_k = reference.tensor_scatter(past_k.astype(np.float64), k.astype(np.float64), indices)
    ours_v = reference.tensor_scatter(past_v.astype(np.float64), v.astype(np.float64), indices)
    ours = reference.attention(q.astype(np.float64), ours_k, ours_v, nonpad_kv_seqlen=indices + 1)
    np.testing.assert_allclose(present_k, ours_k, rtol=0, atol=0)
    np.testing.assert_allclose(present_v, ours_v, rtol=0, atol=0)
    np.testing.assert_allclose(y, ours.y, rtol=1e-6, atol=1e-6)
