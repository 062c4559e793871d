"""Verifier: every manifest case against every runtime, giving the conformance matrix.

For each case: the sha256 of every file against the manifest, ``check_model(full_check=True)``
and strict shape inference, then each runtime's outputs against the stored expected
outputs (which came from an independent reference when the zoo was written).

Cell statuses:
- ``pass``: the runtime loaded and ran the model and every output is within tolerance;
- ``mismatch``: it ran, but some output is not within tolerance;
- ``error``: it loaded the model but raised while running it;
- ``unsupported``: it could not load or compile the model.

The expected status of every cell is committed in ``conformance/baseline.json``
(:mod:`generator.baseline`). Verification fails on any cell whose status differs from
its baseline, in either direction, until someone records the new status on purpose with
``verify --record``. A ``mismatch`` or ``error`` can only be recorded with the reason
the case gives for it (``Case.divergences``). A runtime with no baseline at all (a
plug-in being tried out) fails only on ``mismatch`` and ``error`` without a reason.
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
from generator.zoo import (
    ZOO,
    case_dir,
    load_datasets,
    load_manifest,
    manifest_path,
    model_problem,
    tampered_files,
    unlisted_folders,
)

MATRIX_JSON = ZOO.parent / "build" / "conformance.json"


@dataclass(frozen=True)
class Cell:
    status: str  # pass | mismatch | error | unsupported
    max_abs_err: float | None = None
    detail: str = ""
    known_divergence: str | None = None

    @property
    def failed(self) -> bool:
        """Failing without a baseline: a mismatch or error the case gives no reason for."""
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
        if want.dtype.name == "bfloat16":  # ml_dtypes' bfloat16 (kind "V"): compare its values as float32
            got, want = got.astype(np.float32), want.astype(np.float32)
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


def known_divergence(runtime: Runtime, entry: Mapping) -> str | None:
    """The reason the case gives for disagreeing on this runtime (or one it shares with)."""
    recorded = entry.get("divergences", {})
    return next((recorded[n] for n in (runtime.name, *runtime.shares_divergences_with) if n in recorded), None)


def _outputs(runtime: Runtime, result: object) -> Mapping[str, np.ndarray]:
    """A runner's result, which the plug-in interface says is a dict of output arrays."""
    if not (isinstance(result, Mapping) and all(isinstance(k, str) for k in result)):
        raise UsageError(
            f"runtime {runtime.name!r}: its runner returned {type(result).__name__}; "
            "expected a dict from output name to numpy array"
        )
    return result


def run_cell(runtime: Runtime, case_id: str, entry: Mapping, zoo: Path) -> Cell:
    """One runtime on one case, over all of its datasets."""
    known = known_divergence(runtime, entry)
    datasets = load_datasets(case_id, entry, zoo)
    try:
        runner = runtime.load(case_dir(case_id, zoo) / "model.onnx")
    except Exception as err:  # noqa: BLE001 - failing to load is 'unsupported', which is data
        return Cell("unsupported", detail=first_line(err))
    if not callable(runner):
        raise UsageError(
            f"runtime {runtime.name!r}: load() returned {type(runner).__name__}; expected a function of the inputs"
        )
    worst = 0.0
    for inputs, expected in datasets:
        try:
            result = runner(inputs)
        except Exception as err:  # noqa: BLE001
            return Cell("error", detail=first_line(err), known_divergence=known)
        actual = _outputs(runtime, result)
        try:
            close, err, problem = compare(actual, expected, entry["rtol"], entry["atol"])
        except (TypeError, ValueError) as exc:
            raise UsageError(f"runtime {runtime.name!r}: its outputs are not numeric arrays ({exc})"[:300]) from None
        worst = max(worst, err)
        if not close:
            return Cell("mismatch", worst, problem, known)
    return Cell("pass", worst, known_divergence=known)


def check_integrity(case_ids: Sequence[str], manifest: Mapping, zoo: Path) -> None:
    """Raise one clear error naming every tampered, missing, unlisted or unparsable file."""
    problems = unlisted_folders(manifest, zoo)
    problems += [p for cid in case_ids for p in tampered_files(cid, manifest["cases"][cid], zoo)]
    if not problems:
        for cid in case_ids:
            problem = model_problem(case_dir(cid, zoo) / "model.onnx")
            if problem:
                problems.append(f"{cid}/model.onnx: {problem}")
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


def failures(matrix: Mapping, baseline: Mapping | None = None, *, full: bool = False) -> list[str]:
    """One line per invalid model, and per cell that differs from ``baseline`` (for runtimes
    with a baseline column) or fails without a reason (for runtimes without one)."""
    from generator import baseline as baselines

    baseline = baseline or baselines.empty()
    lines = []
    for cid, row in matrix["cases"].items():
        if row["checker"] != "ok":
            lines.append(f"{cid}: checker/shape inference: {row['checker']}")
        for rt, cell in row["results"].items():
            if rt not in baseline["runtimes"] and Cell(**cell).failed:
                lines.append(f"{cid} on {rt}: {cell['status']}: {cell['detail']}")
    return lines + baselines.changes(matrix, baseline, full=full)


def check_output(path: Path, zoo: Path = ZOO) -> None:
    """The matrix JSON goes neither into the zoo nor over a folder."""
    resolved = path.resolve()
    if resolved == zoo.resolve() or zoo.resolve() in resolved.parents:
        raise UsageError(f"--json {path} is inside the zoo {zoo}; write the matrix elsewhere (default {MATRIX_JSON})")
    if path.is_dir():
        raise UsageError(f"--json {path} is a folder; give a file name such as {path / 'conformance.json'}")


def write_matrix(matrix: Mapping, path: Path = MATRIX_JSON, zoo: Path = ZOO) -> Path:
    check_output(path, zoo)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(matrix, indent=2, sort_keys=True) + "\n")
    return path
