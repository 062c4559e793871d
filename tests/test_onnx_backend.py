"""onnx's own backend-test tooling is a client of the zoo: its loader reads every case, and
its Runner runs every case on onnxruntime's backend within the case's own tolerances
(which the loader reads from each case's ``data.json``)."""

from __future__ import annotations

import os
import re

# Proposed ops live in the unreleased domain org.onnx.genai.proposals; onnxruntime's backend
# skips such models unless its own switch, read when it is imported, says otherwise.
os.environ["ALLOW_RELEASED_ONNX_OPSET_ONLY"] = "0"

import onnx.backend.test.loader  # noqa: E402
import onnxruntime.backend  # noqa: E402
from onnx.backend.test.runner import Runner  # noqa: E402

from generator import baseline  # noqa: E402
from generator.zoo import ZOO, case_dir, load_manifest, split_id  # noqa: E402

MANIFEST = load_manifest()
TOPICS = sorted({split_id(cid)[0] for cid in MANIFEST["cases"]})
LOADED = {topic: onnx.backend.test.loader.load_model_tests(str(ZOO), kind=topic) for topic in TOPICS}


def test_the_loader_reads_every_case_with_its_tolerances() -> None:
    seen = {}
    for topic, tests in LOADED.items():
        for test in tests:
            seen[f"{topic}/{test.name.removeprefix('test_')}"] = test
    assert sorted(seen) == sorted(MANIFEST["cases"])
    for case_id, test in seen.items():
        entry = MANIFEST["cases"][case_id]
        assert test.model_dir == str(case_dir(case_id))
        assert (test.rtol, test.atol) == (entry["rtol"], entry["atol"])


def _runner() -> Runner:
    runner = Runner(onnxruntime.backend, __name__)
    ours = set()
    for topic, tests in LOADED.items():
        for test in tests:
            # The Runner has no public way to add a data folder; this is what its __init__
            # does for each of onnx's own kinds.
            runner._add_model_test(test, topic)
            ours.add(test.name)
    runner.include(rf"^({'|'.join(map(re.escape, sorted(ours)))})_cpu$")
    # Cells the committed baseline expects onnxruntime not to pass are expected failures.
    cells = baseline.load()["runtimes"].get("onnxruntime", {}).get("cells", {})
    for case_id, cell in cells.items():
        if cell["status"] != "pass":
            topic, name = split_id(case_id)
            runner.xfail(rf"^test_{re.escape(name)}_cpu$")
    return runner


# One unittest class per topic (the Runner's category is the loader's kind), collected by pytest.
globals().update(
    {name: cls for name, cls in _runner().test_cases.items() if name[len("OnnxBackend") : -len("ModelTest")] in TOPICS}
)
