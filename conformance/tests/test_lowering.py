"""The compatibility lowering: lowered models give the original outputs, on the zoo's
kv_cache and quantized_attention cases and on drawn fuzz configurations."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings

from conformance import harness
from conformance.engines.lowered import LoweredRuntime, lowered
from conformance.engines.tract import TractRuntime
from conformance.examples import STRATEGIES
from conformance.lowering import lower, lowers
from generator.runtimes import OnnxRuntime
from generator.verify import compare
from generator.zoo import ZOO, case_dir, load_datasets, load_manifest

MANIFEST = load_manifest(ZOO)["cases"]


def _left_after_lowering(case_id: str) -> list[str] | None:
    """The TensorScatter/Attention nodes lowering leaves; None if there were none to lower."""
    model = onnx.load(str(case_dir(case_id) / "model.onnx"))
    if not lowers(model):
        return None
    return [n.op_type for n in lower(model).graph.node if n.op_type in ("TensorScatter", "Attention")]


LEFT = {cid: _left_after_lowering(cid) for cid in MANIFEST if cid.startswith(("kv_cache/", "quantized_attention/"))}
ZOO_CASES = [cid for cid, left in LEFT.items() if left == []]
ORT = OnnxRuntime()


def test_the_zoo_has_cases_to_lower() -> None:
    assert len(ZOO_CASES) >= 10


def test_only_float8_and_int4_caches_stay_tensor_scatter() -> None:
    # ScatterElements does not take those types; onnxruntime has no TensorScatter for them either.
    partly = {cid: left for cid, left in LEFT.items() if left}
    assert partly and all(set(left) == {"TensorScatter"} for left in partly.values())
    assert all("int4" in cid or "float8" in cid for cid in partly), sorted(partly)


@pytest.mark.parametrize("case_id", ZOO_CASES)
def test_lowered_zoo_case_gives_the_expected_outputs(case_id: str) -> None:
    model = onnx.load(str(case_dir(case_id) / "model.onnx"))
    low = lower(model)
    onnx.checker.check_model(low, full_check=True)
    assert not lowers(low), "a TensorScatter or Attention is left in the main graph"
    original, rewritten = ORT.load_model(model), ORT.load_model(low)
    entry = MANIFEST[case_id]
    for inputs, expected in load_datasets(case_id, entry, ZOO):
        got = rewritten(inputs)
        close, _, problem = compare(got, expected, entry["rtol"], entry["atol"])
        assert close, problem
        before = original(inputs)
        for name in expected:  # the same outputs as the original model, not only within tolerance
            np.testing.assert_allclose(got[name], before[name], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("op", ["Attention", "TensorScatter"])
def test_lowered_fuzz_configurations_match_the_reference(op: str) -> None:
    runtime = LoweredRuntime(ORT)

    @settings(max_examples=15, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(STRATEGIES[op]())
    def check(example) -> None:
        low = lower(example.model)
        if example.params.get("dtype") == "int4":  # no older scatter takes int4: left as it is
            assert low.graph.node[0].op_type == "TensorScatter"
            return
        assert not lowers(low)
        # onnxruntime's own divergences are its Attention kernel's: the lowered model does not use it.
        outcome = harness.run_one(runtime, dataclasses.replace(example, model=low))
        assert outcome.status == "pass", outcome.detail

    check()


def test_lowered_plugin_class_wraps_a_runtime_class() -> None:
    cls = lowered(TractRuntime)
    runtime = cls()
    assert cls.name == runtime.name == "tract-lowered"
    assert runtime.version() == TractRuntime().version()
