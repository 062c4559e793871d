"""Collect the cases of ``upstream/node/`` through onnx's case machinery."""

from __future__ import annotations

import importlib
import sys

import onnx

#: module -> the op its cases need (a module whose op the running onnx lacks is skipped)
MODULES = {
    "upstream.node.tensorscatter": "TensorScatter",
    "upstream.node.tensorscatter_attention": "Attention",
    "upstream.node.groupedmatmul": "GroupedMatMul",  # ai.onnx GroupedMatMul-29: onnx-weekly only
}


def supported(module: str) -> bool:
    return MODULES[module] in {s.name for s in onnx.defs.get_all_schemas()}


def collect(module: str) -> list:
    """The TestCases that importing ``module`` hands to onnx's ``expect`` (node or model cases).

    They are taken back out of onnx's own lists, which keep only onnx's cases (so
    ``collect_testcases`` elsewhere in the same process sees no others)."""
    import onnx.backend.test.case.model as model_cases
    import onnx.backend.test.case.node as node_cases

    # onnx's expect() appends to these module lists and offers no public way to read them; it
    # drops every node whose op is not the one an earlier collect_testcases(op_type) asked for
    if module not in _CASES:
        nodes, models = len(node_cases._NodeTestCases), len(model_cases._SimpleModelTestCases)  # noqa: SLF001
        target, node_cases._TargetOpType = node_cases._TargetOpType, None  # noqa: SLF001
        try:
            if module in sys.modules:  # its classes ran expect() at the first import
                importlib.reload(sys.modules[module])
            else:
                importlib.import_module(module)
        finally:
            node_cases._TargetOpType = target  # noqa: SLF001
        _CASES[module] = [*node_cases._NodeTestCases[nodes:], *model_cases._SimpleModelTestCases[models:]]  # noqa: SLF001
        del node_cases._NodeTestCases[nodes:]  # noqa: SLF001
        del model_cases._SimpleModelTestCases[models:]  # noqa: SLF001
    return _CASES[module]


_CASES: dict[str, list] = {}
