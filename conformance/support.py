"""The generated "Runtime support for the GenAI ops" page, from ``conformance/results/fuzz.json``.

One table per op: a row per feature the fuzzer exercised, a column per runtime. A cell is
pass (every drawn configuration with that feature matched the float64 reference), divergence
(a recorded one: it links its repro), or unsupported (the runtime's own reason, numbered
under the table). Mixed cells show the counts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from conformance.divergences import TABLE
from conformance.harness import RESULTS_JSON
from conformance.repros import ALL as REPROS

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
        if status == "divergence":
            text += f" [{why[status]}](#{why[status]})"
        elif status in why:
            if why[status] not in reasons:
                reasons.append(why[status])
            text += f" <sup>{reasons.index(why[status]) + 1}</sup>"
        parts.append(text)
    return " ".join(parts)


def support_markdown(results: Mapping) -> str:
    runtimes = sorted(results["runtimes"])
    lines = [
        "Runtimes: " + ", ".join(f"**{name}** {results['runtimes'][name]}" for name in runtimes) + ".",
        "",
    ]
    for op, data in results["ops"].items():
        reasons: list[str] = []
        lines += [f"## {op}", "", f"{data['configurations']} drawn configurations.", ""]
        lines += ["| feature | " + " | ".join(runtimes) + " |", "|---" * (len(runtimes) + 1) + "|"]
        features = sorted(data["features"], key=lambda f: (f != "all", f))
        for feature in features:
            row = data["features"][feature]
            cells = [_cell(row[rt], reasons) if rt in row else "" for rt in runtimes]
            lines.append(f"| {'every configuration' if feature == 'all' else feature} | " + " | ".join(cells) + " |")
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


def support_page(path: Path = RESULTS_JSON) -> str:
    """The page's generated part (``<!-- generated: conformance.support:support_page -->``)."""
    return support_markdown(json.loads(path.read_text()))
