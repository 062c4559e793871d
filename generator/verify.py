"""Verifier: every manifest case against every runtime, giving the conformance matrix.

For each case: the sha256 of every file against the manifest, ``check_model(full_check=True)``
and strict shape inference, then each runtime's outputs against the stored expected
outputs (which came from an independent reference when the zoo was written).

Cell statuses:
- ``pass``: the runtime loaded and ran the model and every output is within tolerance;
- ``mismatch``: it ran, but some output is not within tolerance;
- ``error``: it loaded the model but raised while running it;
- ``unsupported``: it could not load or compile the model (data, not a failure).

A ``mismatch`` or ``error`` fails verification unless the case records a known
divergence for that runtime, with its reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx

from generator.errors import UsageError
from generator.registry import match_ids
from generator.runtimes import Runtime
from generator.zoo import ZOO, case_dir, load_datasets, load_manifest, manifest_path, tampered_files

MATRIX_JSON = ZOO.parent / "build" / "conformance.json"


@dataclass(frozen=True)
class Cell:
    status: str  # pass | mismatch | error | unsupported
    max_abs_err: float | None = None
    detail: str = ""
    known_divergence: str | None = None

    @property
    def failed(self) -> bool:
        return self.status in ("mismatch", "error") and self.known_divergence is None


# Lines that locate an error in a runtime's C++ sources rather than say what it is.
_NOISE = re.compile(
    r"^(Exception from \S+:\d+:|Check '.*' failed at|FrontEnd API failed with|"
    r"Model wasn't fully converted|Summary:|Traceback)"
)


def first_line(err: BaseException) -> str:
    """One line that says what went wrong, prefixed with the exception type.

    Runtimes that end their message with a ``Summary:`` section (OpenVINO's frontend)
    get that summary; otherwise the first line that is not a source location.
    """
    lines = [line.strip().lstrip("- ").strip() for line in str(err).splitlines()]
    if "Summary:" in lines:
        lines = lines[lines.index("Summary:") + 1 :]
        return f"{type(err).__name__}: {'; '.join(line for line in lines if line)}"[:300]
    meaningful = [line for line in lines if line and not _NOISE.match(line)]
    return f"{type(err).__name__}: {meaningful[0] if meaningful else ''}"[:300]


def compare(
    actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], rtol: float, atol: float
) -> tuple[bool, float, str]:
    """(all close, max abs error, first problem) over every expected output."""
    worst, problem = 0.0, ""
    for name, want in expected.items():
        if name not in actual:
            return False, float("inf"), f"output {name!r} missing"
        got = np.asarray(actual[name])
        if got.shape != want.shape:
            return False, float("inf"), f"output {name!r} has shape {got.shape}, expected {want.shape}"
        if want.size == 0:
            continue
        if want.dtype.kind in "fc":
            diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
            diff = np.where(np.isnan(got) & np.isnan(want), 0.0, diff)
            err = float(np.nanmax(np.where(np.isnan(diff), np.inf, diff)))
            close = np.allclose(got, want, rtol=rtol, atol=atol, equal_nan=True)
        else:
            err = float(np.max(np.abs(got.astype(np.int64) - want.astype(np.int64))))
            close = bool(np.array_equal(got, want))
        worst = max(worst, err)
        if not close and not problem:
            problem = f"output {name!r}: max abs error {err:.3g} > atol {atol:g} + rtol {rtol:g}·|x|"
    return not problem, worst, problem


def static_checks(model_path: Path) -> str:
    """'' if the checker and strict shape inference accept the model, else the reason."""
    try:
        onnx.checker.check_model(str(model_path), full_check=True)
        onnx.shape_inference.infer_shapes(onnx.load(str(model_path)), check_type=True, strict_mode=True, data_prop=True)
    except Exception as err:  # noqa: BLE001 - any checker failure is reported, not raised
        return first_line(err)
    return ""


def run_cell(runtime: Runtime, case_id: str, entry: Mapping, zoo: Path) -> Cell:
    """One runtime on one case, over all of its datasets."""
    recorded = entry.get("divergences", {})
    known = next((recorded[n] for n in (runtime.name, *runtime.shares_divergences_with) if n in recorded), None)
    try:
        runner = runtime.load(case_dir(case_id, zoo) / "model.onnx")
    except Exception as err:  # noqa: BLE001 - failing to load is 'unsupported', which is data
        return Cell("unsupported", detail=first_line(err))
    worst = 0.0
    for inputs, expected in load_datasets(case_id, entry, zoo):
        try:
            actual = runner(inputs)
        except Exception as err:  # noqa: BLE001
            return Cell("error", detail=first_line(err), known_divergence=known)
        close, err, problem = compare(actual, expected, entry["rtol"], entry["atol"])
        worst = max(worst, err)
        if not close:
            return Cell("mismatch", worst, problem, known)
    detail = "known divergence recorded but not observed" if known else ""
    return Cell("pass", worst, detail)


def check_integrity(case_ids: Sequence[str], manifest: Mapping, zoo: Path) -> None:
    """Raise one clear error naming every tampered or missing file."""
    problems = [p for cid in case_ids for p in tampered_files(cid, manifest["cases"][cid], zoo)]
    if problems:
        raise UsageError(
            f"zoo files do not match {manifest_path(zoo)}: {'; '.join(problems)} "
            "(run `make zoo` to regenerate them from the case functions)"
        )


def runtime_version(runtime: Runtime) -> str:
    """The adapter's version; a broken adapter is the user's to fix, named in one line."""
    try:
        return str(runtime.version())
    except Exception as err:  # noqa: BLE001 - plug-in code
        raise UsageError(f"runtime {runtime.name!r}: version() failed ({first_line(err)})") from None


def verify(
    runtimes: Sequence[Runtime],
    patterns: Sequence[str] = (),
    zoo: Path = ZOO,
    progress: Callable[[str, str, Cell], None] = lambda case_id, runtime, cell: None,
) -> dict:
    """Run the matrix and return it as a JSON-ready dict."""
    manifest = load_manifest(zoo)
    ids = match_ids(manifest["cases"], patterns)
    check_integrity(ids, manifest, zoo)
    matrix: dict = {
        "runtimes": [{"name": rt.name, "version": runtime_version(rt)} for rt in runtimes],
        "cases": {},
    }
    for cid in ids:
        entry = manifest["cases"][cid]
        checker = static_checks(case_dir(cid, zoo) / "model.onnx")
        cells = {}
        for rt in runtimes:
            cell = run_cell(rt, cid, entry, zoo)
            cells[rt.name] = asdict(cell)
            progress(cid, rt.name, cell)
        matrix["cases"][cid] = {
            "description": entry["description"],
            "checker": checker or "ok",
            "results": cells,
        }
    return matrix


def failures(matrix: Mapping) -> list[str]:
    """One line per failing cell or invalid model."""
    lines = []
    for cid, row in matrix["cases"].items():
        if row["checker"] != "ok":
            lines.append(f"{cid}: checker/shape inference: {row['checker']}")
        for rt, cell in row["results"].items():
            if Cell(**cell).failed:
                lines.append(f"{cid} on {rt}: {cell['status']}: {cell['detail']}")
    return lines


def write_matrix(matrix: Mapping, path: Path = MATRIX_JSON) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(matrix, indent=2, sort_keys=True) + "\n")
    return path
