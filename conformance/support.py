"""The generated "Runtime support for the GenAI ops" page, from ``conformance/results/fuzz.json``
and the zoo's committed baseline (``conformance/baseline.json``).

One table per op: a row per feature the fuzzer exercised, a column per runtime, then a row
"zoo cases" that counts the recorded cells of every zoo case whose model uses the op. A cell
is pass (every drawn configuration with that feature matched the float64 reference),
divergence (a recorded one: it links its repro), or unsupported (the runtime's own reason,
numbered under the table). Mixed cells show the counts. Both sources are committed files, so
building the page runs nothing.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import onnx

from conformance.divergences import TABLE
from conformance.harness import RESULTS_JSON
from conformance.lowered import LOWERED_JSON
from conformance.repros import ALL as REPROS
from generator.baseline import BASELINE
from generator.zoo import ZOO, case_dir, load_manifest

_SLUGS = {r.slug for r in REPROS}

#: A zoo cell's baseline status as a support-page status.
_ZOO_STATUS = {"pass": "pass", "unsupported": "unsupported", "mismatch": "divergence", "error": "divergence"}

_MARK = {
    "pass": ":material-check-circle:{ .pass }",
    "divergence": ":material-alert:{ .known }",
    "unsupported": ":material-minus-circle:{ .unsupported }",
    "mismatch": ":material-close-circle:{ .fail }",
    "error": ":material-close-circle:{ .fail }",
}


def _cell(entry: Mapping, reasons: list[str]) -> str:
    counts, why = entry["counts"], entry["why"]
    parts = []
    for status in ("pass", "divergence", "unsupported", "mismatch", "error"):
        if status not in counts:
            continue
        text = _MARK[status] + (f" {counts[status]}" if len(counts) > 1 else "")
        if status == "divergence" and why[status] in _SLUGS:
            text += f" [{why[status]}](#{why[status]})"
        elif status in why:
            if why[status] not in reasons:
                reasons.append(why[status])
            text += f" <sup>{reasons.index(why[status]) + 1}</sup>"
        parts.append(text)
    return " ".join(parts)


def _slug_of(reason: str) -> str:
    """The repro a zoo case's divergence reason belongs to (its table row or its title)."""
    rows = {row.reason: row.slug for row in TABLE} | {r.title: r.slug for r in REPROS}
    return rows.get(reason, "")


def case_ops(zoo: Path = ZOO) -> dict[str, set[str]]:
    """Each zoo case's op types (graph and model-local functions, not subgraphs)."""
    ops = {}
    for case_id in load_manifest(zoo)["cases"]:
        model = onnx.load(str(case_dir(case_id, zoo) / "model.onnx"), load_external_data=False)
        nodes = [*model.graph.node, *(n for f in model.functions for n in f.node)]
        ops[case_id] = {n.op_type for n in nodes if n.domain in ("", "ai.onnx")}
    return ops


def zoo_cells(baseline: Mapping, ops: Mapping[str, set[str]]) -> dict[str, dict[str, dict]]:
    """op -> runtime -> {"counts": status -> n, "why": status -> first reason or repro slug}."""
    cells: dict[str, dict[str, dict]] = {}
    for runtime, column in sorted(baseline["runtimes"].items()):
        for case_id, cell in sorted(column["cells"].items()):
            status = _ZOO_STATUS[cell["status"]]
            for op in ops.get(case_id, ()):
                entry = cells.setdefault(op, {}).setdefault(runtime, {"counts": {}, "why": {}})
                entry["counts"][status] = entry["counts"].get(status, 0) + 1
                if status != "pass" and status not in entry["why"]:
                    reason = cell.get("reason", "")
                    entry["why"][status] = (_slug_of(reason) or reason) if status == "divergence" else reason
    return cells


def support_markdown(results: Mapping, zoo: Mapping[str, Mapping] | None = None) -> str:
    zoo = zoo or {}
    runtimes = sorted(results["runtimes"])
    lines = [
        "Runtimes: " + ", ".join(f"**{name}** {results['runtimes'][name]}" for name in runtimes) + ".",
        "",
    ]
    for op, data in results["ops"].items():
        reasons: list[str] = []
        lines += [f"## {op}", "", f"{data['configurations']} drawn configurations.", ""]
        probed = {
            label: per for label, per in results.get("whole_op_refusals", {}).items() if label.split("-")[0] == op
        }
        if probed:
            named = "; ".join(f"{label}: {', '.join(sorted(per))}" for label, per in sorted(probed.items()))
            lines += [
                f"Refused as a whole op (compiled once, then counted as unsupported with the same reason): {named}.",
                "",
            ]
        lines += ["| feature | " + " | ".join(runtimes) + " |", "|---" * (len(runtimes) + 1) + "|"]
        features = sorted(data["features"], key=lambda f: (f != "all", f))
        for feature in features:
            row = data["features"][feature]
            cells = [_cell(row[rt], reasons) if rt in row else "" for rt in runtimes]
            lines.append(f"| {'every configuration' if feature == 'all' else feature} | " + " | ".join(cells) + " |")
        if op in zoo:
            cells = [_cell(zoo[op][rt], reasons) if rt in zoo[op] else "not in the matrix" for rt in runtimes]
            lines.append("| **zoo cases** (recorded baseline) | " + " | ".join(cells) + " |")
        lines.append("")
        lines += [f"{i}. {reason.replace('|', '/')}" for i, reason in enumerate(reasons, 1)]
        lines.append("")
    lines += ["## Recorded divergences", ""]
    rows = {row.slug: row for row in TABLE}
    for repro in REPROS:
        reason = rows[repro.slug].reason if repro.slug in rows else repro.title
        lines += [
            f"### `{repro.slug}` {{ #{repro.slug} }}",
            "",
            f"{reason}. For **{repro.project}**; repro folder `repros/{repro.slug}/` "
            "(`model.onnx`, inputs, expected and actual outputs, `repro.py`, `ISSUE.md`).",
            "",
        ]
    return "\n".join(lines)


def lowering_markdown(data: Mapping) -> str:
    """Op x runtime: the original model's cell, then the lowered model's."""
    runtimes = sorted(data["runtimes"])
    reasons: list[str] = []
    lines = ["| op | " + " | ".join(runtimes) + " |", "|---" * (len(runtimes) + 1) + "|"]
    for op, per_runtime in data["ops"].items():
        for column in ("original", "lowered"):
            cells = [_cell(per_runtime[rt][column], reasons) if rt in per_runtime else "" for rt in runtimes]
            label = f"{op}" if column == "original" else f"{op}, **lowered**"
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"{i}. {reason.replace('|', '/')}" for i, reason in enumerate(reasons, 1)]
    return "\n".join(lines) + "\n"


def lowering_page(path: Path = LOWERED_JSON) -> str:
    """The lowering table (``<!-- generated: conformance.support:lowering_page -->``)."""
    data = json.loads(path.read_text())
    configurations = ", ".join(
        f"{op} {max(sum(c[col]['counts'].values()) for c in per.values() for col in c)}"
        for op, per in data["ops"].items()
    )
    return f"Drawn configurations: {configurations}.\n\n" + lowering_markdown(data)


def support_page(path: Path = RESULTS_JSON, baseline: Path = BASELINE, zoo: Path = ZOO) -> str:
    """The page's generated part (``<!-- generated: conformance.support:support_page -->``)."""
    return support_markdown(json.loads(path.read_text()), zoo_cells(json.loads(baseline.read_text()), case_ops(zoo)))


# onnx's own backend node cases (conformance/onnx_cases.py): a cell's status as a page status
def _onnx_case_status(cell: Mapping) -> tuple[str, str]:
    """(page status, why): a repro-backed failure is a divergence, other failures keep their status."""
    if cell["status"] == "pass":
        return "pass", ""
    known = cell.get("known", "")
    if known in _SLUGS:
        return "divergence", known
    return cell["status"], known or cell.get("detail", "")


def onnx_cases_markdown(data: Mapping) -> str:
    """Op-opset x runtime counts over onnx's own cases, then every failing cell by name."""
    runtimes = sorted(data["runtimes"])
    rows: dict[str, dict[str, dict]] = {}
    failing: list[str] = []
    for name, entry in data["cases"].items():
        for rt, cell in entry["cells"].items():
            status, why = _onnx_case_status(cell)
            slot = rows.setdefault(entry["op"], {}).setdefault(rt, {"counts": {}, "why": {}})
            slot["counts"][status] = slot["counts"].get(status, 0) + 1
            if status != "pass":
                slot["why"].setdefault(status, why)
                if status != "unsupported":
                    shown = f"[{why}](#{why})" if why in _SLUGS else why.replace("|", "/")
                    failing.append(f"| `{name}` | {rt} | {status} | {shown} |")
    reasons: list[str] = []
    lines = [
        "Runtimes: " + ", ".join(f"**{rt}** {data['runtimes'][rt]}" for rt in runtimes) + ".",
        "",
        "| op (cases) | " + " | ".join(runtimes) + " |",
        "|---" * (len(runtimes) + 1) + "|",
    ]

    def order(op: str) -> tuple[str, int]:
        name, _, opset = op.partition("-")
        return name, int(opset)

    for op in sorted(rows, key=order):
        count = sum(1 for e in data["cases"].values() if e["op"] == op)
        cells = [_cell(rows[op][rt], reasons) if rt in rows[op] else "" for rt in runtimes]
        lines.append(f"| {op} ({count}) | " + " | ".join(cells) + " |")
    lines.append("")
    lines += [f"{i}. {reason.replace('|', '/')}" for i, reason in enumerate(reasons, 1)]
    lines += ["", "Every cell that ran and failed:", "", "| case | runtime | status | why |", "|---|---|---|---|"]
    lines += sorted(failing)
    return "\n".join(lines) + "\n"


def onnx_cases_page() -> str:
    """The onnx-cases table (``<!-- generated: conformance.support:onnx_cases_page -->``)."""
    from conformance.onnx_cases import ONNX_CASES_JSON

    return onnx_cases_markdown(json.loads(ONNX_CASES_JSON.read_text()))
