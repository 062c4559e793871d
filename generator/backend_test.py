"""The zoo through onnx's own backend-test tooling.

The zoo is laid out as onnx's backend-test data (``<kind>/test_<case>/`` with
``model.onnx``, ``data.json`` and ``test_data_set_N``), one kind per topic, so
``onnx.backend.test.loader.load_model_tests`` reads it and
``onnx.backend.test.runner.Runner`` runs it on any runtime that has an onnx backend.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from generator.zoo import ZOO, load_manifest, split_id


# --8<-- [start:runner]
def zoo_runner(backend, parent_module: str, zoo: Path = ZOO, xfail_cases: Iterable[str] = ()):
    """An onnx backend-test ``Runner`` over every zoo case; ``xfail_cases`` (``topic/case``)
    are expected to fail on this backend."""
    from onnx.backend.test.loader import load_model_tests
    from onnx.backend.test.runner import Runner

    runner = Runner(backend, parent_module)
    names = []
    for topic in sorted({split_id(case_id)[0] for case_id in load_manifest(zoo)["cases"]}):
        for test in load_model_tests(str(zoo), kind=topic):
            # onnx's Runner has no public call to add a data folder; its __init__ adds each
            # of onnx's own kinds with this method.
            runner._add_model_test(test, topic)
            names.append(test.name)
    runner.include(rf"^({'|'.join(map(re.escape, names))})_cpu$")
    for case_id in xfail_cases:
        runner.xfail(rf"^test_{re.escape(split_id(case_id)[1])}_cpu$")
    return runner


def zoo_test_classes(runner, zoo: Path = ZOO) -> dict[str, type]:
    """The runner's unittest classes for the zoo's topics only (not onnx's own node tests)."""
    topics = {split_id(case_id)[0] for case_id in load_manifest(zoo)["cases"]}
    return {name: cls for name, cls in runner.test_cases.items() if name[11:-9] in topics}


# --8<-- [end:runner]
