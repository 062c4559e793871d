"""Docs helpers: the generated zoo catalogue and conformance-matrix pages.

Both pages are ordinary Markdown pages whose content is printed by an executed
block, so the site always shows the zoo and matrix of the commit it was built from.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

from generator.graphs import function_svg, graph_svg
from generator.registry import discover
from generator.verify import MATRIX_JSON, verify, write_matrix
from generator.zoo import ZOO, case_dir, load_manifest, manifest_path

__all__ = ["catalogue_markdown", "function_svg", "graph_svg", "load_matrix", "matrix_markdown", "matrix_page"]

# Material's inline-SVG icons: emoji glyphs depend on the reader's fonts.
_STATUS_MARK = {
    "pass": ":material-check-circle:{ .pass }",
    "mismatch": ":material-close-circle:{ .fail }",
    "error": ":material-close-circle:{ .fail }",
    "unsupported": ":material-minus-circle:{ .unsupported }",
}
_KNOWN_MARK = ":material-alert:{ .known }"


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
    base = case_dir(case_id).relative_to(ZOO.parent).as_posix()
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
    return json.loads(write_matrix(verify(runtimes, zoo=zoo), path, zoo).read_text())


def _cell_text(cell: Mapping) -> str:
    mark = _STATUS_MARK[cell["status"]]
    if cell["status"] == "unsupported":
        return f"{mark} unsupported"
    err = f" {cell['max_abs_err']:.1e}" if cell["max_abs_err"] is not None else ""
    if cell["known_divergence"] and cell["status"] != "pass":
        return f"{_KNOWN_MARK} {cell['status']}{err} (known)"
    return f"{mark} {cell['status']}{err}"


def matrix_markdown(matrix: Mapping) -> str:
    """Summary per runtime, the case × runtime table, then the reasons behind each cell."""
    runtimes = [rt["name"] for rt in matrix["runtimes"]]
    versions = {rt["name"]: rt["version"] for rt in matrix["runtimes"]}
    counts = {rt: defaultdict(int) for rt in runtimes}
    for row in matrix["cases"].values():
        for rt, cell in row["results"].items():
            counts[rt][cell["status"]] += 1
    lines = ["| runtime | version | pass | mismatch | error | unsupported |", "|---|---|---|---|---|---|"]
    for rt in runtimes:
        c = counts[rt]
        lines.append(f"| {rt} | {versions[rt]} | {c['pass']} | {c['mismatch']} | {c['error']} | {c['unsupported']} |")
    lines += ["", "| case | checker | " + " | ".join(runtimes) + " |", "|---|---|" + "---|" * len(runtimes)]
    for cid, row in matrix["cases"].items():
        checker = _STATUS_MARK["pass"] if row["checker"] == "ok" else f"{_STATUS_MARK['mismatch']} {row['checker']}"
        cells = " | ".join(_cell_text(row["results"][rt]) for rt in runtimes)
        lines.append(f"| [`{cid}`](catalogue.md#{anchor(cid)}) | {checker} | {cells} |")
    notes: dict[tuple[str, str], list[str]] = defaultdict(list)
    for cid, row in matrix["cases"].items():
        for rt, cell in row["results"].items():
            reason = cell["known_divergence"] or cell["detail"]
            if cell["status"] != "pass" and reason:
                notes[(rt, f"{cell['status']}: {reason}")].append(f"`{cid}`")
    if notes:
        lines += ["", "### Why cells are not passing", ""]
        for (rt, reason), ids in sorted(notes.items()):
            lines.append(f"- **{rt}**, {reason.replace('|', '/')}: {', '.join(ids)}")
    return "\n".join(lines) + "\n"


def matrix_page() -> str:
    """The conformance page's generated part: the matrix of the current zoo."""
    return matrix_markdown(load_matrix())


def pass_counts(topic: str, matrix: Mapping | None = None) -> tuple[int, dict[str, int]]:
    """How many of a topic's zoo cases the matrix has, and how many pass on each runtime
    (for sentences such as "8 cases pass on onnxruntime"; the matrix page has the cells)."""
    matrix = load_matrix() if matrix is None else matrix
    rows = [row for case_id, row in matrix["cases"].items() if case_id.startswith(f"{topic}/")]
    runtimes = [rt["name"] for rt in matrix["runtimes"]]
    return len(rows), {rt: sum(row["results"][rt]["status"] == "pass" for row in rows) for rt in runtimes}
