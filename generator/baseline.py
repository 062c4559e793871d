"""Committed conformance baselines: the expected status of every case × runtime cell.

``conformance/baseline.json`` holds, per runtime, its version when recorded and one entry
per case: ``{"status": "pass"}``, ``{"status": "unsupported", "reason": <the runtime's
own one-line message>}``, or ``{"status": "mismatch" | "error", "reason": <the case's
recorded divergence>}``. ``verify`` compares every cell it runs with it and fails on any
difference, naming the cell and the command that records the new status on purpose.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from generator.errors import UsageError
from generator.zoo import ROOT, split_id

BASELINE = ROOT / "conformance" / "baseline.json"
FORMAT = 1
STATUSES = ("pass", "mismatch", "error", "unsupported")


def empty() -> dict:
    return {"format": FORMAT, "runtimes": {}}


def _problem(data: object) -> str:
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("runtimes"), dict):
        return f"not a format-{FORMAT} baseline (an object with 'format' and 'runtimes')"
    for runtime, column in data["runtimes"].items():
        if not (isinstance(column, dict) and isinstance(column.get("cells"), dict)):
            return f"runtime {runtime!r} needs an object with 'version' and 'cells'"
        for case_id, cell in column["cells"].items():
            split_id(case_id)
            if not (isinstance(cell, dict) and cell.get("status") in STATUSES):
                return f"{case_id} on {runtime}: 'status' must be one of {', '.join(STATUSES)}"
            if cell["status"] != "pass" and not isinstance(cell.get("reason"), str):
                return f"{case_id} on {runtime}: a {cell['status']} cell needs its 'reason'"
    return ""


def load(path: Path = BASELINE) -> dict:
    """The committed baseline (empty if there is none yet); a malformed one is a one-line error."""
    if not path.exists():
        above = next((p for p in path.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise UsageError(f"--baseline {path}: {above} is a file; give the baseline JSON (default {BASELINE})")
        return empty()
    if not path.is_file():
        raise UsageError(f"--baseline {path} is not a file; give the baseline JSON (default {BASELINE})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not valid JSON ({err}); restore it from git or record it again") from None
    except RecursionError:
        raise UsageError(f"{path} is JSON nested too deeply to be a baseline; restore it from git") from None
    problem = _problem(data)
    if problem:
        raise UsageError(f"{path}: {problem}; restore it from git or record it again")
    return data


def save(data: Mapping, path: Path = BASELINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def record_command(case_id: str | None = None) -> str:
    return f"python -m generator verify --record{' ' + case_id if case_id else ''}"


def observed(cell: Mapping) -> dict:
    """A matrix cell as the baseline stores it: its status, and the reason unless it passed
    (the case's divergence reason, else the runtime's own message)."""
    if cell["status"] == "pass":
        return {"status": "pass"}
    return {"status": cell["status"], "reason": cell["known_divergence"] or cell["detail"]}


def _describe(cell: Mapping) -> str:
    return cell["status"] + (f" ({cell['reason']})" if cell.get("reason") else "")


def changes(matrix: Mapping, baseline: Mapping, *, full: bool) -> list[str]:
    """One line per cell whose status differs from the baseline, for every runtime that has
    a baseline column; on a full run also the baseline cells of cases no longer in the zoo."""
    lines = []
    columns = baseline["runtimes"]
    for case_id, row in matrix["cases"].items():
        for runtime, cell in row["results"].items():
            if runtime not in columns:
                continue
            want = columns[runtime]["cells"].get(case_id)
            now = observed(cell)
            if want is None:
                lines.append(
                    f"{case_id} on {runtime}: new cell, {_describe(now)}, has no baseline; "
                    f"record it on purpose: {record_command(case_id)}"
                )
            elif want["status"] != cell["status"]:
                lines.append(
                    f"{case_id} on {runtime}: baseline {_describe(want)}, now {_describe(now)}; "
                    f"if intended, record it: {record_command(case_id)}"
                )
    if full:
        run = {rt["name"] for rt in matrix["runtimes"]}
        for runtime in sorted(run & set(columns)):
            for case_id in sorted(set(columns[runtime]["cells"]) - set(matrix["cases"])):
                lines.append(
                    f"{case_id} on {runtime}: in the baseline but no longer in the zoo; "
                    f"record to drop it: {record_command()}"
                )
    return lines


def recorded(matrix: Mapping, baseline: Mapping, *, full: bool) -> tuple[dict, list[str]]:
    """The baseline with every cell of ``matrix`` recorded, and one line per change.

    A ``mismatch`` or ``error`` is recorded only with the case's reason for it, and a case
    may not keep a divergence reason for a runtime on which it now passes.
    """
    refused = []
    for case_id, row in matrix["cases"].items():
        for runtime, cell in row["results"].items():
            if cell["status"] in ("mismatch", "error") and not cell["known_divergence"]:
                refused.append(
                    f"{case_id} on {runtime} is a {cell['status']} with no reason: add "
                    f"divergences={{{runtime!r}: 'why'}} to the case function and run `make zoo` first"
                )
            elif cell["status"] == "pass" and cell["known_divergence"]:
                refused.append(
                    f"{case_id} passes on {runtime}, but the case still records a divergence for it: "
                    "remove it from the case's divergences and run `make zoo` first"
                )
    if refused:
        raise UsageError(f"not recorded: {'; '.join(refused)}")
    data = json.loads(json.dumps(baseline))
    lines = changes(matrix, baseline, full=full)
    for runtime in matrix["runtimes"]:
        column = data["runtimes"].setdefault(runtime["name"], {"version": runtime["version"], "cells": {}})
        column["version"] = runtime["version"]
        if full:
            column["cells"] = {}
    for case_id, row in matrix["cases"].items():
        for runtime, cell in row["results"].items():
            data["runtimes"][runtime]["cells"][case_id] = observed(cell)
    return data, lines
