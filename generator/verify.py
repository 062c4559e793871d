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

import hashlib
import json
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cache, partial
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
CELL_CACHE = ZOO.parent / "build" / "verify-cache"
CELL_TIMEOUT = 300.0  # seconds a runtime may take to load and run one case (verify --cell-timeout)


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


class CellTimeout(Exception):
    """A runtime's code did not return within the cell timeout."""


def guarded(runtime: Runtime, what: str, call: Callable[[], object], timeout: float) -> object:
    """``call()`` (plug-in code) in a daemon thread: a hang becomes ``CellTimeout`` and the run
    goes on (the thread is abandoned); ``sys.exit()`` in it is a one-line error, so a plug-in
    cannot end ``verify`` before the baseline comparison; a KeyboardInterrupt is passed on."""
    box: dict[str, object] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as err:  # noqa: BLE001 - handed to the calling thread
            box["error"] = err

    worker = threading.Thread(target=target, name=f"verify {runtime.name}: {what}", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise CellTimeout(f"{what} did not finish within {timeout:g} s (verify --cell-timeout)")
    err = box.get("error")
    if isinstance(err, SystemExit):
        raise UsageError(
            f"runtime {runtime.name!r}: {what} called sys.exit({err.code!r}); "
            "a runtime raises an exception instead, so that verify can go on"
        )
    if isinstance(err, BaseException):
        raise err
    return box["value"]


@cache
def _package_digest(module_name: str) -> str:
    """sha256 over the Python sources of the top-level package (or lone module) that
    ``module_name`` belongs to: an edit anywhere in an adapter's package is a new adapter."""
    top = sys.modules.get(module_name.partition(".")[0])
    roots = [Path(p) for p in getattr(top, "__path__", [])] or [Path(top.__file__)]
    digest = hashlib.sha256()
    for root in roots:  # paths relative to the package: a copy of the checkout shares the cache
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            digest.update(path.relative_to(root.parent).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


class CellCache:
    """Cells already run, one JSON file each under ``build/verify-cache/``.

    A cell's key is everything its result depends on: the runtime's name and version, the
    sources of its adapter's package and of this package (the comparison), numpy's and
    onnx's versions, and the case's manifest entry, which holds the sha256 of every file
    (model and data) with the tolerances and the recorded divergences. The files are
    hashed against the manifest on every run (:func:`check_integrity`) before any cell is
    looked up, so a cached cell always belongs to the bytes on disk.
    """

    def __init__(self, folder: Path = CELL_CACHE) -> None:
        self.folder = folder

    def key(self, runtime: Runtime, version: str, entry: Mapping) -> str:
        cls = type(runtime)
        identity = {
            "runtime": [runtime.name, f"{cls.__module__}:{cls.__qualname__}", version],
            "adapter": _package_digest(cls.__module__),
            "verifier": _package_digest(__name__),
            "versions": [np.__version__, onnx.__version__],
            "entry": entry,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

    def get(self, key: str) -> Cell | None:
        path = self.folder / f"{key}.json"
        try:
            return Cell(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):  # absent or unreadable: run the cell
            return None

    def put(self, key: str, cell: Cell) -> None:
        """Write atomically: concurrent runs (two `make` jobs) never read half a file."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(cell), f, sort_keys=True)
        os.replace(tmp, self.folder / f"{key}.json")


def guarded_cell(runtime: Runtime, case_id: str, entry: Mapping, zoo: Path, timeout: float) -> Cell:
    """:func:`run_cell` under :func:`guarded`: a runtime slower than ``timeout`` is an error cell."""
    try:
        return guarded(
            runtime, f"its load() or runner on {case_id}", partial(run_cell, runtime, case_id, entry, zoo), timeout
        )
    except CellTimeout as err:
        return Cell("error", detail=f"CellTimeout: {err}", known_divergence=known_divergence(runtime, entry))


def cached_cell(
    runtime: Runtime, version: str, case_id: str, entry: Mapping, zoo: Path, cache: CellCache | None, timeout: float
) -> Cell:
    """:func:`guarded_cell`, or its earlier result for the same runtime, adapter and bytes.
    A timed-out cell is not cached: the next run tries it again."""
    if cache is None:
        return guarded_cell(runtime, case_id, entry, zoo, timeout)
    key = cache.key(runtime, version, entry)
    cell = cache.get(key)
    if cell is None:
        cell = guarded_cell(runtime, case_id, entry, zoo, timeout)
        if not cell.detail.startswith("CellTimeout"):
            cache.put(key, cell)
    return cell


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


class NotInstalled(Exception):
    """A runtime whose engine package is not installed here: its column is skipped."""


def runtime_version(runtime: Runtime, timeout: float = CELL_TIMEOUT) -> str:
    """The adapter's version, called under :func:`guarded`. An engine that is not installed
    (``version()`` raises ImportError) is :class:`NotInstalled`; any other broken adapter is
    the user's to fix, named in one line."""
    try:
        return str(guarded(runtime, "version()", runtime.version, timeout))
    except ImportError as err:
        raise NotInstalled(
            f"{runtime.name} skipped: its engine is not installed here ({first_line(err)}); "
            "install it to run this column"
        ) from None
    except Exception as err:  # noqa: BLE001 - plug-in code
        raise UsageError(f"runtime {runtime.name!r}: version() failed ({first_line(err)})") from None


def installed(
    runtimes: Sequence[Runtime], timeout: float = CELL_TIMEOUT
) -> tuple[list[tuple[Runtime, str]], dict[str, str]]:
    """The runtimes whose engines are installed, with their versions, and for each of the
    others the one line that says why its column is skipped."""
    present, skipped = [], {}
    for runtime in runtimes:
        try:
            present.append((runtime, runtime_version(runtime, timeout)))
        except NotInstalled as err:
            skipped[runtime.name] = str(err)
    return present, skipped


def verify(
    runtimes: Sequence[Runtime],
    patterns: Sequence[str] = (),
    zoo: Path = ZOO,
    progress: Callable[[str, str, Cell], None] = lambda case_id, runtime, cell: None,
    *,
    cache: CellCache | None = None,
    timeout: float = CELL_TIMEOUT,
) -> dict:
    """Run the matrix and return it as a JSON-ready dict. A runtime whose engine is not
    installed has no column; ``skipped`` says why. Each cell runs under ``guarded``: a
    runtime that takes longer than ``timeout`` seconds on a case is an ``error`` cell. With
    ``cache``, a cell whose runtime, adapter and case bytes are unchanged since it last ran
    is read from there."""
    manifest = load_manifest(zoo)
    ids = match_ids(manifest["cases"], patterns)
    check_integrity(ids, manifest, zoo)
    present, skipped = installed(runtimes, timeout)
    matrix: dict = {
        "runtimes": [{"name": rt.name, "version": version} for rt, version in present],
        "skipped": skipped,
        "cases": {},
    }
    for cid in ids:
        entry = manifest["cases"][cid]
        checker = static_checks(case_dir(cid, zoo) / "model.onnx")
        cells = {}
        for rt, version in present:
            cell = cached_cell(rt, version, cid, entry, zoo, cache, timeout)
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
    above = next((p for p in path.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UsageError(f"--json {path}: {above} is a file, so the matrix cannot be written there; give another path")


def write_matrix(matrix: Mapping, path: Path = MATRIX_JSON, zoo: Path = ZOO) -> Path:
    check_output(path, zoo)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(matrix, indent=2, sort_keys=True) + "\n")
    return path
