"""``python -m conformance.onnx_cases``: onnx's own backend node cases for the GenAI ops on every
runtime of the matrix, the cases an implementer runs first.

The cases come from onnx's case machinery (``onnx.backend.test.case.node.collect_testcases``):
the model, inputs and expected outputs each ``export_*`` method hands to ``expect``, compared
within the case's own tolerances (onnx's ``rtol=1e-3, atol=1e-7``), exactly as onnx's backend
Runner does. Only the op's own node cases run, not the ``_expanded`` function-body copies.

Every cell's status is committed in ``conformance/results/onnx_cases.json`` (the baseline):
a run fails on any cell whose status differs from it, in either direction, until the new status
is recorded on purpose (``--record``). A ``mismatch`` or ``error`` is only accepted when
:data:`KNOWN` explains it (a repro slug, or a rounding reason). The full run (about 140 cases
x 7 runtimes) is ``make onnx-cases``; ``make test`` reruns a small sample (``conformance/tests/test_onnx_cases.py``).
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from fnmatch import fnmatch
from pathlib import Path

import numpy as np

from conformance.engines import clean
from generator.errors import UsageError
from generator.runtimes import Runtime, available
from generator.verify import compare, first_line

ONNX_CASES_JSON = Path(__file__).resolve().parent / "results" / "onnx_cases.json"
OPS = ("Attention", "TensorScatter", "RotaryEmbedding", "RMSNormalization", "SwiGLU", "LinearAttention")

_HALF = (
    "{} rounding only: every element is within two {} steps of onnx's expected output (the "
    "runtime rounds intermediates to the output type), and onnx's rtol 1e-3 is finer than one step"
)
_QK_CAUSAL_PAST = "test_attention_4d_with_past_and_present_qk_matmul_bias_*_mask_causal"  # qk mode 2
#: (case-name pattern, runtime pattern) -> what explains the cell's mismatch or error: the slug
#: of its repros/ folder, or, for rounding that is no divergence, the reason.
KNOWN: tuple[tuple[str, str, str], ...] = (
    ("test_attention*window*", "openvino*", "openvino-attention25-window-ignored"),
    ("test_attention*window*", "tract", "tract-attention25-window-ignored"),
    ("test_attention_4d_causal_with_past_and_present", "tract", "tract-attention-causal-past-top-left"),
    (_QK_CAUSAL_PAST, "openvino*", "openvino-attention-causal-past-offset"),
    (_QK_CAUSAL_PAST, "onnxruntime", "onnxruntime-attention-qk-mode2-lowest-not-inf"),
    ("test_attention_4d_diff_heads_mask4d_padded_kv", "onnxruntime", "onnxruntime-attention-short-mask-rejected"),
    ("test_attention_*_bf16", "openvino*", _HALF.format("bfloat16", "bfloat16 (2^-8 relative)")),
    ("test_attention_4d_causal_fp16", "onnxruntime", _HALF.format("float16", "float16 (2^-11 relative)")),
)


def known(case: str, runtime: str) -> str | None:
    """The repro slug or reason that explains ``case`` failing on ``runtime``, if any."""
    return next((why for c, r, why in KNOWN if fnmatch(case, c) and fnmatch(runtime, r)), None)


def node_cases(ops: Sequence[str] = OPS):
    """onnx's backend node cases whose single node is one of ``ops`` (op order, then name)."""
    import onnx.backend.test.case.node as node

    with warnings.catch_warnings():
        # onnx's cases overflow and divide by zero in NumPy on purpose (expected inf and nan)
        warnings.simplefilter("ignore", RuntimeWarning)
        cases = node.collect_testcases()
    picked = [
        c
        for c in cases
        if len(c.model.graph.node) == 1 and c.model.graph.node[0].op_type in ops and "_expanded" not in c.name
    ]
    return sorted(picked, key=lambda c: (ops.index(c.model.graph.node[0].op_type), c.name))


def run_case(runtime: Runtime, case) -> dict[str, str]:
    """One cell: ``{"status": pass|mismatch|error|unsupported[, "detail"]}``."""
    graph = case.model.graph
    (inputs, outputs) = case.data_sets[0]
    feeds = {i.name: np.asarray(a) for i, a in zip(graph.input, inputs, strict=False)}
    expected = {o.name: np.asarray(a) for o, a in zip(graph.output, outputs, strict=False)}
    try:
        runner = runtime.load_model(case.model)
    except Exception as err:  # noqa: BLE001 - refusing a model is data
        return {"status": "unsupported", "detail": clean(first_line(err))}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            actual = runner(feeds)
    except Exception as err:  # noqa: BLE001
        return {"status": "error", "detail": clean(first_line(err))}
    close, _, problem = compare(actual, expected, case.rtol, case.atol)
    return {"status": "pass"} if close else {"status": "mismatch", "detail": problem}


def collect(matrix: Sequence[Runtime], ops: Sequence[str] = OPS, names: Iterable[str] | None = None) -> dict:
    """Cells of every picked case on every runtime, with the runtimes' versions."""
    wanted = set(names) if names is not None else None
    cells: dict[str, dict[str, dict]] = {}
    ops_of: dict[str, str] = {}
    for case in node_cases(ops):
        if wanted is not None and case.name not in wanted:
            continue
        node = case.model.graph.node[0]
        ops_of[case.name] = f"{node.op_type}-{case.model.opset_import[0].version}"
        for rt in matrix:
            cell = run_case(rt, case)
            why = known(case.name, rt.name)
            if why and cell["status"] in ("mismatch", "error"):
                cell["known"] = why
            cells.setdefault(case.name, {})[rt.name] = cell
    return {
        "runtimes": {rt.name: str(rt.version()) for rt in matrix},
        "cases": {name: {"op": ops_of[name], "cells": cells[name]} for name in sorted(cells)},
    }


def differences(results: Mapping, baseline: Mapping) -> list[str]:
    """One line per cell whose status differs from the baseline, and per unexplained failure."""
    lines = []
    for name, entry in results["cases"].items():
        recorded = baseline.get("cases", {}).get(name, {}).get("cells", {})
        for rt, cell in entry["cells"].items():
            before = recorded.get(rt, {}).get("status")
            if before != cell["status"]:
                lines.append(f"{name} on {rt}: {cell['status']} (baseline: {before}): {cell.get('detail', '')}")
            elif cell["status"] in ("mismatch", "error") and "known" not in cell:
                lines.append(f"{name} on {rt}: {cell['status']} that KNOWN does not explain: {cell.get('detail', '')}")
    return lines


def load(path: Path = ONNX_CASES_JSON) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"runtimes": {}, "cases": {}}


def write(results: Mapping, path: Path = ONNX_CASES_JSON) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m conformance.onnx_cases", description=__doc__.splitlines()[0])
    parser.add_argument("--record", action="store_true", help="write the statuses as the new baseline")
    parser.add_argument("--ops", nargs="*", default=list(OPS), help=f"ops to run (default: {' '.join(OPS)})")
    parser.add_argument("--runtime", nargs="*", default=None, help="only these runtimes (default: all)")
    args = parser.parse_args(argv)
    try:
        unknown = sorted(set(args.ops) - set(OPS))
        if unknown:
            raise UsageError(f"unknown op(s) {unknown}; valid: {', '.join(OPS)}")
        matrix = available()
        if args.runtime is not None:
            names = {rt.name for rt in matrix}
            missing = sorted(set(args.runtime) - names)
            if missing:
                raise UsageError(f"unknown runtime(s) {missing}; valid: {', '.join(sorted(names))}")
            matrix = [rt for rt in matrix if rt.name in args.runtime]
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    results = collect(matrix, tuple(args.ops))
    baseline = load()
    if args.record:
        merged = {
            "runtimes": {**baseline["runtimes"], **results["runtimes"]},
            "cases": {**baseline["cases"]},
        }
        for name, entry in results["cases"].items():
            cells = {**merged["cases"].get(name, {}).get("cells", {}), **entry["cells"]}
            merged["cases"][name] = {"op": entry["op"], "cells": dict(sorted(cells.items()))}
        write(merged)
        print(f"recorded {len(results['cases'])} cases x {len(matrix)} runtimes in {ONNX_CASES_JSON.name}")
        return 0
    problems = differences(results, baseline)
    for line in problems:
        print(line)
    total = sum(len(e["cells"]) for e in results["cases"].values())
    print(f"{total - len(problems)} passed, {len(problems)} failed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
