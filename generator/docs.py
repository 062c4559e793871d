"""Docs helpers: the generated zoo catalogue and conformance-matrix pages.

Both pages are ordinary Markdown pages whose content is printed by an executed
block, so the site always shows the zoo and matrix of the commit it was built from.
"""

from __future__ import annotations

import html
import json
import posixpath
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import onnx
from onnx import helper

from generator.errors import UsageError
from generator.graphs import function_svg, graph_svg
from generator.lint import CONCLUSION, conclusion
from generator.markdown import expand_generated, headings, link_targets
from generator.registry import discover
from generator.verify import MATRIX_JSON, CellCache, verify, write_matrix
from generator.zoo import ZOO, case_dir, load_manifest, manifest_path

ROOT = Path(__file__).resolve().parent.parent

__all__ = [
    "catalogue_markdown",
    "function_svg",
    "graph_svg",
    "load_matrix",
    "matrix_markdown",
    "matrix_page",
    "proposals_table",
    "runtimes_sentence",
]

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


def zoo_site_dir(case_id: str) -> str:
    """Where a case's files are published on the site: its zoo folder, relative to the
    repository root (the same path as on GitHub)."""
    return case_dir(case_id).relative_to(ROOT).as_posix()


def _single_call(case_id: str) -> str:
    """For a model that is one call of a model-local function, what that call is (its
    picture would be one box); '' otherwise."""
    model = onnx.load(str(case_dir(case_id) / "model.onnx"), load_external_data=False)
    local = {(f.domain, f.name) for f in model.functions}
    if len(model.graph.node) != 1 or (model.graph.node[0].domain, model.graph.node[0].op_type) not in local:
        return ""
    node = model.graph.node[0]
    attrs = ", ".join(f"`{a.name}={helper.get_attribute_value(a)!r}`".replace("b'", "'") for a in node.attribute)
    callees = ", ".join(f"`{f.name}`" for f in model.functions if f.name != node.op_type)
    text = f"One `{node.domain}.{node.op_type}` node" + (f" ({attrs})" if attrs else "")
    text += ", run as the model-local function shipped in the file"
    text += f" (which calls {callees})." if callees else "."
    return text + " Its body: [Operators](operators.md)."


def _downloads(case_id: str, entry: Mapping) -> list[str]:
    """A download line per file group: the model, then each test data set's .pb files."""
    base = zoo_site_dir(case_id)
    groups: dict[str, list[str]] = defaultdict(list)
    for rel in entry["files"]:
        groups[rel.split("/")[0] if "/" in rel else ""].append(rel)
    lines = []
    for group, rels in groups.items():
        links = " · ".join(f"[`{rel.split('/')[-1]}`]({base}/{rel})" for rel in rels)
        lines.append(f"- {f'`{group}/`: ' if group else ''}{links}")
    return lines


def case_markdown(case_id: str, entry: Mapping, source: str | None) -> str:
    """One catalogue entry: description, picture, I/O table, downloads, source."""
    base = zoo_site_dir(case_id)
    opsets = ", ".join(f"{d} {v}" for d, v in entry["opset_imports"].items())
    call = _single_call(case_id)
    picture = call or f"[![Graph of {case_id}]({base}/graph.svg){{ loading=lazy }}]({base}/graph.svg)"
    lines = [
        f"### `{case_id}` {{ #{anchor(case_id)} }}",
        "",
        entry["description"],
        "",
        f"IR {entry['ir_version']} · opsets {opsets} · {entry['datasets']} test data set(s) · "
        f"rtol {entry['rtol']:g}, atol {entry['atol']:g}",
        "",
        picture,
        "",
        *_io_table(entry),
        "",
        "Download:",
        "",
        *_downloads(case_id, entry),
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
    """The downloads, a summary table of every case, then every case grouped by topic,
    in manifest order."""
    manifest = load_manifest(zoo)
    sources = {spec.id: spec.source for spec in discover().values()}
    by_topic: dict[str, list[str]] = defaultdict(list)
    for case_id in manifest["cases"]:
        by_topic[case_id.split("/")[0]].append(case_id)
    summary = ["| case | what it checks | data sets |", "|---|---|--:|"]
    for _topic, ids in sorted(by_topic.items()):
        for cid in ids:
            entry = manifest["cases"][cid]
            first = entry["description"].split(". ")[0].rstrip(".").replace("|", "/")
            summary.append(f"| [`{cid}`](#{anchor(cid)}) | {first} | {entry['datasets']} |")
    parts = ["\n".join(summary) + "\n"]
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
        names = [rt["name"] for rt in matrix["runtimes"]] + list(matrix.get("skipped", {}))
        if same_cases and sorted(names) == sorted(rt.name for rt in runtimes):
            return matrix
    cache = CellCache() if zoo.resolve() == ZOO.resolve() else None
    return json.loads(write_matrix(verify(runtimes, zoo=zoo, cache=cache), path, zoo).read_text())


def _reason(cell: Mapping) -> str:
    """Why a cell is not a pass, on one line (the known divergence's text when recorded)."""
    return (cell["known_divergence"] or cell["detail"] or "").replace("|", "/").replace("\n", " ").strip()


def _cell_text(cell: Mapping, note: int | None) -> str:
    """One matrix cell: titled icon, the largest error, and a link to the reason's note.
    The legend above the table names the icons, so the status word is left out."""
    status = cell["status"]
    mark = _KNOWN_MARK if cell["known_divergence"] and status != "pass" else _STATUS_MARK[status]
    text = f"{cell['max_abs_err']:.1e}" if cell["max_abs_err"] is not None and status != "unsupported" else ""
    if status not in ("pass", "unsupported"):
        text = f"{status} {text}".strip()
    if note is None:
        return f'<span class="nowrap">{mark} {text}</span>'
    title = html.escape(_reason(cell), quote=True)
    return f'<span class="nowrap" title="{title}">{mark} {text} [[{note}]](#why-{note})</span>'


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
    if matrix.get("skipped"):
        lines += ["", "Not run where this page was built: " + "; ".join(matrix["skipped"].values()) + "."]

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
        lines += ["", f"### {topic}", "", '<div class="matrix" markdown>', ""]
        lines += ["| case | checker | " + " | ".join(runtimes) + " |"]
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
            # a break opportunity after each underscore keeps the case column narrow
            name = cid.split("/", 1)[1].replace("_", "_<wbr>")
            lines.append(f"| [<code>{name}</code>](catalogue.md#{anchor(cid)}) | {checker} | {' | '.join(cells)} |")
        lines += ["", "</div>"]
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


def pass_counts(topic: str, matrix: Mapping | None = None) -> tuple[int, dict[str, int]]:
    """How many of a topic's zoo cases the matrix has, and how many pass on each runtime
    (for sentences such as "8 cases pass on onnxruntime"; the matrix page has the cells)."""
    matrix = load_matrix() if matrix is None else matrix
    rows = [row for case_id, row in matrix["cases"].items() if case_id.startswith(f"{topic}/")]
    runtimes = [rt["name"] for rt in matrix["runtimes"]]
    return len(rows), {rt: sum(row["results"][rt]["status"] == "pass" for row in rows) for rt in runtimes}


def _from_home(text: str, topic: str, prefix: str = "proposals/") -> str:
    """``text`` from ``proposals/<topic>/README.md`` with its relative links made relative to
    the page that lists it: ``prefix`` is the proposals' folder seen from that page
    (``proposals/`` from the home page, ``docs/index.md``; empty from ``docs/proposals/index.md``)."""
    for target in dict.fromkeys(link_targets(text)):
        if "://" in target or target.startswith(("mailto:", "/")):
            continue
        path, _, anchor = target.partition("#")
        moved = posixpath.normpath(f"{prefix}{topic}/{path or 'README.md'}") + (f"#{anchor}" if anchor else "")
        text = text.replace(f"]({target})", f"]({moved})")
    return text


def _title(page: Path) -> str:
    found = headings(page.read_text(), 1)
    return found[0] if found else page.stem


def proposal_row(topic: str, root: Path = ROOT, prefix: str = "proposals/") -> str:
    """One row of the home page's table: the proposal's title and other pages, linked, and
    the one-line conclusion its Summary gives (its ``**Conclusion:**`` paragraph)."""
    page = root / "proposals" / topic / "README.md"
    if not page.is_file():
        raise UsageError(f"proposals/{topic}/ has no README.md, the proposal's page; the home page lists every topic")
    text = conclusion(page.read_text())
    if not text:
        raise UsageError(f"{page.relative_to(root)}: no '{CONCLUSION} ...' paragraph in its '## Summary'")
    links = [f"[{_title(page)}]({prefix}{topic}/README.md)"]
    links += [f"[{_title(p)}]({prefix}{topic}/{p.name})" for p in sorted(page.parent.glob("*.md")) if p != page]
    answer = _from_home(expand_generated(text), topic, prefix).replace("|", "\\|")
    return f"| {'<br>↳ '.join(links)} | {answer[:1].upper()}{answer[1:]} |"


def proposals_table(root: Path = ROOT, prefix: str = "proposals/") -> str:
    """The home page's list of proposals: every topic folder under ``proposals/``, read from
    the folders (a new topic appears without editing the home page)."""
    names = sorted(p.name for p in (root / "proposals").iterdir() if p.is_dir() and not p.name.startswith(("_", ".")))
    rows = [proposal_row(topic, root, prefix) for topic in names]
    return "\n".join(["| Proposal | Its conclusion |", "|---|---|", *rows]) + "\n"


def proposals_index() -> str:
    """The same list on the Proposals section's own page (``docs/proposals/index.md``)."""
    return proposals_table(prefix="")


def runtimes_sentence(matrix: Mapping | None = None) -> str:
    """How many runtimes the conformance matrix runs every zoo model on, and which."""
    matrix = load_matrix() if matrix is None else matrix
    names = [rt["name"] for rt in matrix["runtimes"]]
    skipped = list(matrix.get("skipped", {}))
    text = f"the {len(names)} runtimes of the [conformance matrix](conformance.md) ({', '.join(names)})"
    if skipped:
        text += f"; {', '.join(skipped)} not installed where this site was built"
    return text


def build_stamp() -> str:
    """The home page's build stamp: the commit the site was built from, its date, and the
    versions of the packages the examples and the matrix ran on."""
    import subprocess
    from importlib.metadata import version

    def git(*args: str) -> str:
        run = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return run.stdout.strip() if run.returncode == 0 else ""

    commit = git("rev-parse", "--short=12", "HEAD") or "unknown"
    dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    date = git("log", "-1", "--format=%cs") or "unknown"
    packages = ("onnx", "onnxruntime", "openvino", "transformers", "onnxscript", "torch")
    versions = " · ".join(f"{name} {version(name)}" for name in packages)
    return f"Built from commit `{commit}`{dirty} of {date} · {versions}\n"
