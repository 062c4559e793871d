"""``python -m upstream.grouped_matmul`` (``make upstream``, in .venv-upstream): this project's
GroupedMatMul against ai.onnx GroupedMatMul-29 as onnx-weekly ships it.

1. onnx-weekly's backend cases (``onnx/backend/test/case/node/groupedmatmul.py``) against this
   project's numpy reference, its function body (on onnx's ReferenceEvaluator and onnxruntime),
   and every runtime of the matrix loading the opset-29 node itself;
2. this project's GroupedMatMul zoo cases, in the opset-29 form (:func:`on_onnx_op`), against
   onnx-weekly's reference (its context-dependent function body);
3. the two schemas: names, types, optional bias, index range, empty shapes, opset;
4. every difference found must be one that the GroupedMatMul page lists (:data:`DIFFERENCES`),
   and every listed one must still be found.

Writes ``upstream/results/grouped_matmul.json`` (the page's tables are built from it) and exits
1 on any failed check.
"""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from conformance.engines import clean
from generator.runtimes import OnnxRuntime, ReferenceRuntime, Runtime, available
from generator.verify import compare, first_line

RESULTS = Path(__file__).resolve().parent / "results" / "grouped_matmul.json"
_TENSOR = re.compile(r"tensor\((\w+)\)")


@dataclass(frozen=True)
class Difference:
    key: str
    project: str  # what this project's GroupedMatMul had before onnx-weekly
    onnx: str  # what ai.onnx GroupedMatMul-29 says
    change: str  # what the project changes to match
    remains: bool = False  # the change keeps both forms, so the field still differs


# --8<-- [start:differences]
DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "opset",
        "domain `org.onnx.genai.proposals`, version 1",
        "domain `ai.onnx`, since opset 29 (onnx 1.24)",
        "the MoE body and the fusion rules accept both (`moe_model(..., onnx_grouped_matmul=True)`, "
        "`on_onnx_op`); the opset-29 zoo is `upstream/zoo/`; the proposal-domain op stays while released "
        "onnx (1.23.2) stops at opset 28",
        remains=True,
    ),
    Difference(
        "type:T",
        "float, float16, bfloat16",
        "float, float16, double, bfloat16",
        "double added to T",
    ),
    Difference(
        "type:group_indices",
        "int64 only",
        "`Tind`: int32 or int64",
        "group_indices takes `Tind` (int32 or int64); the body's ops accept both",
    ),
    Difference(
        "index-range",
        "indices in `[-G, G)`; a negative index counts from the end, as in Gather",
        "'Values outside [0, G) are invalid input' (onnx-weekly's reference, a Gather, still accepts -1)",
        "indices in `[0, G)`: the reference rejects a negative index; the zoo case "
        "`grouped_matmul_repeated_groups` no longer uses negative indices",
    ),
)
# --8<-- [end:differences]


def weekly_cases() -> list:
    """onnx-weekly's GroupedMatMul node cases (not the ``_expanded`` function-body copies)."""
    import onnx.backend.test.case.node as node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cases = node.collect_testcases("GroupedMatMul")
    return sorted((c for c in cases if "_expanded" not in c.name), key=lambda c: c.name)


def _feeds(case) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    graph = case.model.graph
    inputs, outputs = case.data_sets[0]
    present = [i.name for i in graph.input]
    return (
        {n: np.asarray(a) for n, a in zip(present, inputs, strict=True)},
        {o.name: np.asarray(a) for o, a in zip(graph.output, outputs, strict=True)},
    )


def _cell(run: Callable[[], Mapping[str, np.ndarray]], expected, rtol: float, atol: float) -> dict:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            actual = run()
    except Exception as err:  # noqa: BLE001 - a refusal is data
        return {"status": "unsupported", "detail": clean(first_line(err))}
    close, _, problem = compare(actual, expected, rtol, atol)
    return {"status": "pass"} if close else {"status": "mismatch", "detail": problem}


def _project_model(feeds: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    from proposals.moe.grouped_matmul import grouped_matmul_model

    return grouped_matmul_model(feeds["input"], feeds["weights"], feeds["group_indices"], feeds.get("bias"))


def check_weekly_cases(matrix: list[Runtime]) -> dict[str, dict[str, dict]]:
    """Check 1: case -> implementation -> cell."""
    from proposals.moe.grouped_matmul import reference

    table: dict[str, dict[str, dict]] = {}
    for case in weekly_cases():
        feeds, expected = _feeds(case)
        (name,) = expected
        row = table.setdefault(case.name, {})
        row["project reference"] = _cell(
            lambda feeds=feeds, name=name, out=expected[name]: {name: reference(**feeds).astype(out.dtype)},
            expected,
            case.rtol,
            case.atol,
        )
        for rt in (ReferenceRuntime(), OnnxRuntime()):
            row[f"project body on {rt.name}"] = _cell(
                lambda rt=rt, feeds=feeds: rt.load_model(_project_model(feeds))(feeds), expected, case.rtol, case.atol
            )
        for rt in matrix:
            row[f"GroupedMatMul-29 on {rt.name}"] = _cell(
                lambda rt=rt, case=case, feeds=feeds: rt.load_model(case.model)(feeds), expected, case.rtol, case.atol
            )
    return table


def check_zoo_cases() -> dict[str, dict]:
    """Check 2: each GroupedMatMul zoo case, in the opset-29 form, on onnx-weekly's reference."""
    from upstream.zoo import verify

    return verify(lambda case_id: case_id.startswith("moe/grouped_matmul_"))


def check_reference_inside_function() -> dict:
    """onnx-weekly's ReferenceEvaluator on GroupedMatMul-29 called inside a model-local function
    (the GroupedMatMulND wrapper, or the MoE body), without inlining first."""
    from proposals.moe.grouped_matmul import grouped_matmul_model, on_onnx_op, reference_nd

    x, w = np.ones((2, 3, 2), np.float32), np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    idx = np.array([[0, 2, 1], [1, 1, 0]], np.int64)
    feeds = {"input": x, "weights": w, "group_indices": idx}
    model = on_onnx_op(grouped_matmul_model(x, w, idx, nd=True))
    expected = {"output": reference_nd(x, w, idx).astype(np.float32)}
    return _cell(lambda: ReferenceRuntime().load_model(model)(feeds), expected, 1e-6, 1e-6)


def check_schemas() -> tuple[dict[str, dict[str, str]], list[str]]:
    """Check 3: field -> {"project", "onnx"} for every compared field, and the keys that differ."""
    from generator.onnx_build import PROPOSAL_DOMAIN
    from proposals.moe.grouped_matmul import SCHEMA, reference

    theirs = onnx.defs.get_schema("GroupedMatMul", 29, "")
    ours_types = {t.name: sorted(t.types) for t in SCHEMA.type_constraints}
    their_types = {t.type_param_str: sorted(t.allowed_type_strs) for t in theirs.type_constraints}

    def param_types(param_type: str, types: Mapping[str, list[str]]) -> str:
        return ", ".join(types.get(param_type, [param_type]))

    fields = {
        "opset": (f"{PROPOSAL_DOMAIN} {SCHEMA.since_version}", f"ai.onnx {theirs.since_version}"),
        "inputs": (
            ", ".join(p.name + ("?" if p.optional else "") for p in SCHEMA.inputs),
            ", ".join(
                i.name + ("?" if i.option == onnx.defs.OpSchema.FormalParameterOption.Optional else "")
                for i in theirs.inputs
            ),
        ),
        "outputs": (", ".join(p.name for p in SCHEMA.outputs), ", ".join(o.name for o in theirs.outputs)),
        "attributes": (", ".join(a.name for a in SCHEMA.attributes) or "none", ", ".join(theirs.attributes) or "none"),
    }
    for ours, their in zip(SCHEMA.inputs, theirs.inputs, strict=True):
        key = "type:T" if ours.type == "T" else f"type:{ours.name}"
        fields[key] = (param_types(ours.type, ours_types), param_types(their.type_str, their_types))
    # the index range: what each reference does with index -1 (and what each text says)
    x, w = np.ones((1, 2), np.float32), np.arange(12, dtype=np.float32).reshape(3, 2, 2)
    try:
        reference(x, w, np.array([[-1]], np.int64))
        ours_range = "accepts -1"
    except ValueError:
        ours_range = "rejects -1"
    their_text = "[0, G)" if "[0, G)" in theirs.inputs[2].description else theirs.inputs[2].description
    fields["index-range"] = (f"[0, G): reference {ours_range}", f"{their_text}")
    if ours_range == "accepts -1":
        fields["index-range"] = ("[-G, G): reference accepts -1", fields["index-range"][1])
    # empty shapes: zero tokens and zero selections through our reference
    shapes = []
    for m, k in ((0, 2), (2, 0)):
        out = reference(np.zeros((m, 2), np.float32), w, np.zeros((m, k), np.int64))
        shapes.append(f"M={m} k={k} -> {list(out.shape)}")
    their_shapes = "M, S, N (zero tokens and zero selections are backend cases)"
    fields["empty-shapes"] = ("; ".join(shapes), their_shapes)
    table = {key: {"project": a, "onnx": b} for key, (a, b) in fields.items()}
    differ = [key for key, (a, b) in fields.items() if _differs(key, a, b)]
    return table, differ


def _differs(key: str, ours: str, theirs: str) -> bool:
    if key == "index-range":
        return not ours.startswith("[0, G)")
    if key == "empty-shapes":
        return "[0, 2, 2]" not in ours or "[2, 0, 2]" not in ours
    if key == "opset":
        return True
    return ours != theirs


def run(matrix: list[Runtime] | None = None) -> tuple[dict, list[str]]:
    """All four checks: the results and one line per failure."""
    matrix = available() if matrix is None else matrix
    problems: list[str] = []
    weekly = check_weekly_cases(matrix)
    for case, row in weekly.items():
        for impl, cell in row.items():
            if not impl.startswith("GroupedMatMul-29 on") and cell["status"] != "pass":
                problems.append(f"check 1: {case}: {impl}: {cell['status']}: {cell.get('detail', '')}")
        if row["GroupedMatMul-29 on reference"]["status"] != "pass":
            problems.append(f"check 1: {case}: onnx-weekly's own reference fails its case")
    zoo = check_zoo_cases()
    failed = {c: cell for c, cell in zoo.items() if cell["status"] != "pass"}
    problems += [f"check 2: {c}: {cell['status']}: {cell.get('detail', '')}" for c, cell in failed.items()]
    schema, differ = check_schemas()
    finding = check_reference_inside_function()
    listed = {d.key: d for d in DIFFERENCES}
    for key in sorted(set(differ) - set(listed)):
        problems.append(f"check 4: {key!r} differs ({schema[key]}) and the GroupedMatMul page does not list it")
    for key, d in listed.items():
        if key not in schema:
            problems.append(f"check 4: the page lists {key!r}, which the schema comparison no longer has")
        elif key in differ and not d.remains:
            problems.append(f"check 4: the page says {key!r} was changed to match, but it differs: {schema[key]}")
    results = {
        "onnx": onnx.__version__,
        "runtimes": {rt.name: str(rt.version()) for rt in matrix},
        "weekly_cases": weekly,
        "zoo_cases": zoo,
        "schema": schema,
        "differ_now": differ,
        "reference_inside_function": finding,
    }
    return results, problems


def write(results: Mapping, path: Path = RESULTS) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def main() -> int:
    if "GroupedMatMul" not in {s.name for s in onnx.defs.get_all_schemas()}:
        print(
            f"upstream.grouped_matmul: onnx {onnx.__version__} has no ai.onnx GroupedMatMul; run it with "
            ".venv-upstream/bin/python (make upstream)",
            file=sys.stderr,
        )
        return 2
    results, problems = run()
    write(results)
    cells = sum(len(r) for r in results["weekly_cases"].values()) + len(results["zoo_cases"])
    for line in problems:
        print(line)
    print(
        f"GroupedMatMul: {len(results['weekly_cases'])} onnx-weekly cases, {len(results['zoo_cases'])} zoo cases, "
        f"{len(results['schema'])} schema fields ({len(results['differ_now'])} differ): {cells} cells; "
        f"{len(problems)} problem(s)"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())


def _status(cell: Mapping) -> str:
    return cell["status"] if cell["status"] == "pass" else f"{cell['status']}: {cell.get('detail', '')}"


def page_markdown(path: Path = RESULTS) -> str:
    """The GroupedMatMul page's onnx-weekly section, from the committed results."""
    data = json.loads(path.read_text())
    lines = [
        f"Checked with onnx {data['onnx']}. Differences found, and what this project changed:",
        "",
        "| field | this project had | ai.onnx GroupedMatMul-29 | what changes here |",
        "|---|---|---|---|",
    ]
    lines += [f"| {d.key} | {d.project} | {d.onnx} | {d.change} |" for d in DIFFERENCES]
    lines += ["", "The schemas as they compare now:", "", "| field | this project | onnx-weekly |", "|---|---|---|"]
    for key, row in data["schema"].items():
        lines.append(_TENSOR.sub(r"\1", f"| {key} | {row['project']} | {row['onnx']} |"))
    cases = data["weekly_cases"]
    impls = sorted({impl for row in cases.values() for impl in row}, key=lambda i: (i.startswith("GroupedMatMul"), i))
    lines += [
        "",
        f"onnx-weekly's {len(cases)} GroupedMatMul cases ({', '.join(f'`{c}`' for c in cases)}: the seven named "
        "exports of `groupedmatmul.py`, and the four of `export_additional_types`, float16 and double with int32 "
        "and int64 indices), each run by:",
        "",
        "| implementation | result |",
        "|---|---|",
    ]
    for impl in impls:
        statuses: dict[str, list[str]] = {}
        for case, row in cases.items():
            statuses.setdefault(_status(row[impl]), []).append(case)
        result = "; ".join(
            f"{len(names)} of {len(cases)} {text.replace('|', '/')}" for text, names in sorted(statuses.items())
        )
        lines.append(f"| {impl} | {result} |")
    inside = data["reference_inside_function"]
    lines += [
        "",
        "onnx-weekly's ReferenceEvaluator on GroupedMatMul-29 called inside a model-local function "
        f"(the GroupedMatMulND wrapper, not inlined): **{inside['status']}** "
        f"(`{inside.get('detail', '').split(': ')[0] or 'no error'}`: {inside.get('detail', '').partition(': ')[2]}) "
        + (
            "It builds the op's context-dependent body from the node's input types, which it has no "
            "shape inference for inside a function; `make upstream` inlines model-local functions "
            "first (`upstream.zoo.weekly_reference`). To report to onnx/onnx before 1.24."
            if inside["status"] != "pass"
            else ""
        ),
    ]
    zoo = ", ".join(f"`{c.split('/')[1]}` {_status(cell)}" for c, cell in data["zoo_cases"].items())
    lines += ["", f"This project's zoo cases in the opset-29 form, on onnx-weekly's reference: {zoo}."]
    moe = json.loads((path.parent / "zoo.json").read_text())
    passed = sum(cell["status"] == "pass" for cell in moe.values())
    lines += [
        "",
        f"Every MoE zoo case in the opset-29 form (`upstream/zoo/moe/`, the MoE body calling "
        f"GroupedMatMul-29), on onnx-weekly's reference with model-local functions inlined: "
        f"{passed} of {len(moe)} pass.",
        "",
    ]
    return "\n".join(lines)
