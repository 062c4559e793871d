"""onnx's own backend-test tooling is a client of the zoo: its loader reads every case, and
its Runner runs every case on onnxruntime's backend within the case's own tolerances
(which the loader reads from each case's ``data.json``)."""

from __future__ import annotations

import warnings

import onnx.backend.test.case.node
import onnx.backend.test.loader
import pytest
from onnx.backend.test.case.utils import import_recursive

with warnings.catch_warnings():
    # onnxruntime 1.32's backend module still imports onnx.version, which onnx 1.23 deprecates.
    warnings.filterwarnings("ignore", "onnx.version is deprecated", DeprecationWarning)
    import onnxruntime.backend

    # onnx's Runner imports every one of onnx's own node test cases; building their inputs
    # overflows and divides by zero in NumPy on purpose (their expected outputs are inf and nan).
    warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"onnx\.backend\.test\.case\.node")
    import_recursive(onnx.backend.test.case.node)

from generator import baseline  # noqa: E402
from generator.backend_test import zoo_runner, zoo_test_classes  # noqa: E402
from generator.zoo import ZOO, case_dir, load_manifest, split_id  # noqa: E402

MANIFEST = load_manifest()


@pytest.fixture(autouse=True)
def _unreleased_opsets_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proposed ops live in the unreleased domain org.onnx.genai.proposals; onnxruntime's
    backend skips such models unless its switch (read from ALLOW_RELEASED_ONNX_OPSET_ONLY
    when it is imported) is off. Off for these tests only, not for the process or its children."""
    monkeypatch.setattr(onnxruntime.backend.backend.OnnxRuntimeBackend, "allowReleasedOpsetsOnly", False)


def test_the_loader_reads_every_case_with_its_tolerances() -> None:
    seen = {}
    for topic in sorted({split_id(cid)[0] for cid in MANIFEST["cases"]}):
        for test in onnx.backend.test.loader.load_model_tests(str(ZOO), kind=topic):
            seen[f"{topic}/{test.name.removeprefix('test_')}"] = test
    assert sorted(seen) == sorted(MANIFEST["cases"])
    for case_id, test in seen.items():
        entry = MANIFEST["cases"][case_id]
        assert test.model_dir == str(case_dir(case_id))
        assert (test.rtol, test.atol) == (entry["rtol"], entry["atol"])


# Cells the committed baseline expects onnxruntime not to pass are the expected failures.
_CELLS = baseline.load()["runtimes"].get("onnxruntime", {}).get("cells", {})
_EXPECTED_FAILURES = [case_id for case_id, cell in _CELLS.items() if cell["status"] != "pass"]

# --8<-- [start:usage]
# test_zoo_backend.py: `pytest test_zoo_backend.py` runs every zoo case on the backend
runner = zoo_runner(onnxruntime.backend, __name__, xfail_cases=_EXPECTED_FAILURES)
globals().update(zoo_test_classes(runner))
# --8<-- [end:usage]
