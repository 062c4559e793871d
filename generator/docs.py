"""Docs helpers: the generated zoo catalogue and conformance-matrix pages.

Both pages are ordinary Markdown pages whose content is printed by an executed
block, so the site always shows the zoo and matrix of the commit it was built from.
"""

from __future__ import annotations

import html
import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from generator.graphs import function_svg, graph_svg
from generator.registry import discover
from generator.verify import MATRIX_JSON, verify, write_matrix
from generator.zoo import ZOO, load_manifest, manifest_path

__all__ = ["catalogue_markdown", "function_svg", "graph_svg", "load_matrix", "matrix_markdown", "matrix_page"]

# Material's inline-SVG icons (emoji glyphs depend on the reader's fonts), each with a
# title that a pointer or a screen reader shows.
_STATUS_MARK = {
    "pass": ':material-check-circle:{ .pass title="pass" }',
    "mismatch": ':material-close-circle:{ .fail title="mismatch" }',
    "error": ':material-close-circle:{ .fail title="error" }',
    "unsupported": ':material-minus-circle:{ .unsupported title="unsupported" }',
}
_KNOWN_MARK = ':material-alert:{ .known title="known divergence" }'


def anchor(case_id: str) -> str:
    """The catalogue heading id of a case (``topic-case``)."""
    return case_id.replace("/", "-")


def _shape(io: Mapping) -> str:
    return "scalar" if io["shape"] == [] else f"[{', '.join(map(str, io['shape'] or ['?']))}]"


def _io_table(entry: Mapping) -> list[str]:
    rows = ["| | name | dtype | shape |", "|---|---|---|---|"]
    for kind in ("inputs", "outputs"):
        for io in entry[kind]:
            rows.append(f"| {kind[:-1]} | `{io['name']}` | {io['dtype']} | `{_shape(io)}` |")
    return rows


def case_markdown(case_id: str, entry: Mapping, source: str | None) -> str:
    """One catalogue entry: description, picture, I/O table, downloads, source."""
    base = f"zoo/{case_id}"
    opsets = ", ".join(f"{d} {v}" for d, v in entry["opset_imports"].items())
    downloads = " · ".join(f"[`{rel}`]({base}/{rel})" for rel in entry["files"] if not rel.startswith("test_data_set_"))
    lines = [
        f"### `{case_id}` {{ #{anchor(case_id)} }}",
        "",
        entry["description"],
        "",
        f"IR {entry['ir_version']} · opsets {opsets} · {entry['datasets']} test data set(s) · "
        f"rtol {entry['rtol']:g}, atol {entry['atol']:g} · download {downloads}",
        "",
        f"![Graph of {case_id}]({base}/graph.svg){{ loading=lazy }}",
        "",
        *_io_table(entry),
        "",
    ]
    for runtime, reason in entry["divergences"].items():
        lines += [f"Known divergence on **{runtime}**: {reason}", ""]
    if source:
        lines += ['??? example "Case source"', "", "    ```python"]
        lines += [f"    {line}" if line else "" for line in source.rstrip().splitlines()]
        lines += ["    ```", ""]
    return "\n".join(lines)


def catalogue_markdown(zoo: Path = ZOO) -> str:
    """The whole catalogue, grouped by topic, in manifest order."""
    manifest = load_manifest(zoo)
    sources = {spec.id: spec.source for spec in discover().values()}
    by_topic: dict[str, list[str]] = defaultdict(list)
    for case_id in manifest["cases"]:
        by_topic[case_id.split("/")[0]].append(case_id)
    parts = []
    for topic, ids in sorted(by_topic.items()):
        parts.append(f"## {topic}\n\n{len(ids)} cases. Proposal: [{topic}](proposals/{topic}/README.md).\n")
        parts += [case_markdown(cid, manifest["cases"][cid], sources.get(cid)) for cid in ids]
    return "\n".join(parts)


def load_matrix(path: Path = MATRIX_JSON, zoo: Path = ZOO) -> dict:
    """The matrix of the last full ``verify`` run; run again here if it is older than the
    manifest or covers other cases or runtimes (``verify kv_cache`` writes a partial one)."""
    from generator.runtimes import available

    runtimes = available()
    if path.exists() and path.stat().st_mtime >= manifest_path(zoo).stat().st_mtime:
        matrix = json.loads(path.read_text())
        same_cases = set(matrix["cases"]) == set(load_manifest(zoo)["cases"])
        if same_cases and [rt["name"] for rt in matrix["runtimes"]] == [rt.name for rt in runtimes]:
            return matrix
    return json.loads(write_matrix(verify(runtimes, zoo=zoo), path).read_text())


def _reason(cell: Mapping) -> str:
    """Why a cell is not a pass, on one line (the known divergence's text when recorded)."""
    return (cell["known_divergence"] or cell["detail"] or "").replace("|", "/").replace("\n", " ").strip()


def _cell_text(cell: Mapping, note: int | None) -> str:
    """One matrix cell: icon, status, error, and a link to the reason's note."""
    status = cell["status"]
    mark = _KNOWN_MARK if cell["known_divergence"] else _STATUS_MARK[status]
    err = f" {cell['max_abs_err']:.1e}" if cell["max_abs_err"] is not None and status != "unsupported" else ""
    text = f"{status}{err}" + (" (known)" if cell["known_divergence"] else "")
    if note is None:
        return f'{mark} <span class="nowrap">{text}</span>'
    title = html.escape(_reason(cell), quote=True)
    return f'{mark} <span class="nowrap" title="{title}">{text} [[{note}]](#why-{note})</span>'


def matrix_markdown(matrix: Mapping) -> str:
    """Summary per runtime; then one case × runtime table per topic, each cell that is not
    a pass linked to a numbered note; then the notes, one per distinct reason."""
    runtimes = [rt["name"] for rt in matrix["runtimes"]]
    versions = {rt["name"]: rt["version"] for rt in matrix["runtimes"]}
    counts = {rt: defaultdict(int) for rt in runtimes}
    for row in matrix["cases"].values():
        for rt, cell in row["results"].items():
            counts[rt][cell["status"]] += 1
    lines = ["| runtime | version | pass | mismatch | error | unsupported |", "|---|---|--:|--:|--:|--:|"]
    for rt in runtimes:
        c = counts[rt]
        lines.append(f"| {rt} | {versions[rt]} | {c['pass']} | {c['mismatch']} | {c['error']} | {c['unsupported']} |")

    # One note per distinct reason, numbered in page order; runtimes sharing it are listed once.
    notes: dict[str, dict[str, list[str]]] = {}
    for cid, row in matrix["cases"].items():
        for rt in runtimes:
            cell = row["results"][rt]
            if cell["status"] != "pass" and _reason(cell):
                notes.setdefault(_reason(cell), {}).setdefault(rt, []).append(cid)
    number = {reason: i for i, reason in enumerate(notes, 1)}

    by_topic: dict[str, list[str]] = defaultdict(list)
    for cid in matrix["cases"]:
        by_topic[cid.split("/")[0]].append(cid)
    for topic, ids in by_topic.items():
        lines += ["", f"### {topic}", "", "| case | checker | " + " | ".join(runtimes) + " |"]
        lines.append("|---|---|" + "---|" * len(runtimes))
        for cid in ids:
            row = matrix["cases"][cid]
            ok = row["checker"] == "ok"
            checker = _STATUS_MARK["pass"] if ok else f"{_STATUS_MARK['mismatch']} {row['checker'].replace('|', '/')}"
            cells = []
            for rt in runtimes:
                cell = row["results"][rt]
                reason = _reason(cell) if cell["status"] != "pass" else ""
                cells.append(_cell_text(cell, number[reason] if reason else None))
            name = cid.split("/", 1)[1]
            lines.append(f"| [`{name}`](catalogue.md#{anchor(cid)}) | {checker} | {' | '.join(cells)} |")
    if notes:
        lines += ["", "### Why cells are not passing", ""]
        for reason, by_runtime in notes.items():
            where = "; ".join(f"**{rt}**: {', '.join(f'`{cid}`' for cid in ids)}" for rt, ids in by_runtime.items())
            lines.append(f'{number[reason]}. <a id="why-{number[reason]}"></a>{reason}  ')
            lines.append(f"    {where}")
    return "\n".join(lines) + "\n"


def matrix_page() -> str:
    """The conformance page's generated part: the matrix of the current zoo."""
    return matrix_markdown(load_matrix())
