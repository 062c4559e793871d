"""Zoo writer and reader: the ONNX backend-test layout plus a sha256 manifest.

``zoo/<topic>/<case>/model.onnx`` and ``test_data_set_N/{input,output}_K.pb``, with
``zoo/manifest.json`` describing every case and hashing every file. Writing is
byte-deterministic: models are stamped (IR version, producer) and serialized with
protobuf's deterministic encoding; files whose bytes did not change are not touched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from generator.errors import UsageError
from generator.onnx_build import stamp
from generator.registry import Case, CaseSpec

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "zoo"
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
MAX_FILE_BYTES = 1 << 20  # reference models stay small: no git-lfs, fast clones


@dataclass(frozen=True)
class BuiltCase:
    """A case function's result, validated, with the exact bytes it writes."""

    spec: CaseSpec
    case: Case
    files: dict[str, bytes]

    def manifest_entry(self) -> dict:
        model = self.case.model
        return {
            "topic": self.spec.topic,
            "name": self.spec.name,
            "description": self.spec.description,
            "generator": self.spec.qualname,
            "ir_version": model.ir_version,
            "opset_imports": {o.domain or "ai.onnx": o.version for o in model.opset_import},
            "functions": [f"{f.domain}.{f.name}" for f in model.functions],
            "inputs": [_io_entry(v) for v in model.graph.input],
            "outputs": [_io_entry(v) for v in model.graph.output],
            "datasets": len(self.case.datasets),
            "rtol": self.case.rtol,
            "atol": self.case.atol,
            "divergences": dict(sorted(self.case.divergences.items())),
            "files": {path: {"sha256": sha256(data), "bytes": len(data)} for path, data in sorted(self.files.items())},
        }


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | str:
    return d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")


def _io_entry(value: onnx.ValueInfoProto) -> dict:
    tensor = value.type.tensor_type
    return {
        "name": value.name,
        "dtype": helper.tensor_dtype_to_np_dtype(tensor.elem_type).name,
        "shape": [_dim(d) for d in tensor.shape.dim] if tensor.HasField("shape") else None,
    }


def _check_tensors(
    spec: CaseSpec, kind: str, declared: list[onnx.ValueInfoProto], given: Mapping[str, np.ndarray], index: int
) -> list[np.ndarray]:
    """The dataset's arrays in graph order, after checking names, dtypes and ranks."""
    names = [v.name for v in declared]
    if set(given) != set(names):
        raise UsageError(
            f"case {spec.id} dataset {index}: {kind} {sorted(given)} do not match the graph's {kind} {names}"
        )
    arrays = []
    for value in declared:
        array = np.asarray(given[value.name])
        want = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if array.dtype != want:
            raise UsageError(
                f"case {spec.id} dataset {index}: {kind[:-1]} {value.name!r} is {array.dtype}, "
                f"the graph declares {want}"
            )
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and len(dims) != array.ndim:
            raise UsageError(
                f"case {spec.id} dataset {index}: {kind[:-1]} {value.name!r} has rank "
                f"{array.ndim}, the graph declares rank {len(dims)}"
            )
        arrays.append(array)
    return arrays


def build(spec: CaseSpec) -> BuiltCase:
    """Run the case function and lay out the bytes of every file it produces."""
    case = spec.build()
    if not isinstance(case, Case):
        raise UsageError(f"case {spec.id} returned {type(case).__name__}, expected generator.Case")
    if not case.datasets:
        raise UsageError(f"case {spec.id} has no datasets; give at least one DataSet")
    model = stamp(case.model)
    model.graph.name = model.graph.name or spec.name
    files = {"model.onnx": model.SerializeToString(deterministic=True)}
    for i, dataset in enumerate(case.datasets):
        for kind, declared, given in (
            ("inputs", list(model.graph.input), dataset.inputs),
            ("outputs", list(model.graph.output), dataset.outputs),
        ):
            arrays = _check_tensors(spec, kind, declared, given, i)
            for k, (value, array) in enumerate(zip(declared, arrays, strict=True)):
                tensor = numpy_helper.from_array(np.ascontiguousarray(array), value.name)
                files[f"test_data_set_{i}/{kind[:-1]}_{k}.pb"] = tensor.SerializeToString(deterministic=True)
    for path, data in case.files.items():
        if path in files or path.startswith("test_data_set_") or ".." in Path(path).parts:
            raise UsageError(f"case {spec.id}: extra file name {path!r} is reserved or unsafe")
        files[path] = bytes(data)
    for path, data in files.items():
        if len(data) > MAX_FILE_BYTES:
            raise UsageError(
                f"case {spec.id}: {path} is {len(data)} bytes; zoo files stay under "
                f"{MAX_FILE_BYTES} bytes (shrink the model)"
            )
    return BuiltCase(spec, case, files)


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def write_case(built: BuiltCase, zoo: Path) -> None:
    """Write one case directory, removing files the case no longer produces."""
    folder = zoo / built.spec.topic / built.spec.name
    for rel, data in built.files.items():
        _write_if_changed(folder / rel, data)
    if folder.exists():
        for path in sorted(folder.rglob("*"), reverse=True):
            rel = path.relative_to(folder).as_posix()
            if path.is_file() and rel not in built.files:
                path.unlink()
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()


def manifest_path(zoo: Path = ZOO) -> Path:
    return zoo / MANIFEST_NAME


def load_manifest(zoo: Path = ZOO) -> dict:
    """The manifest as written by :func:`write`; a clear error if missing or unreadable."""
    path = manifest_path(zoo)
    if not path.exists():
        raise UsageError(f"no zoo manifest at {path}; run `make zoo` first")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise UsageError(f"{path} is not valid JSON ({err}); run `make zoo` to regenerate") from None
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("cases"), dict):
        raise UsageError(f"{path} is not a format-{MANIFEST_FORMAT} zoo manifest; run `make zoo`")
    return manifest


def _dump(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def write(
    specs: Iterable[CaseSpec],
    zoo: Path = ZOO,
    *,
    prune: bool,
    progress: Callable[[CaseSpec, BuiltCase], None] = lambda spec, built: None,
) -> dict:
    """Build and write ``specs``; with ``prune`` (a full run) drop cases no longer registered."""
    zoo.mkdir(parents=True, exist_ok=True)
    old = load_manifest(zoo)["cases"] if manifest_path(zoo).exists() and not prune else {}
    cases = dict(old)
    for spec in specs:
        built = build(spec)
        write_case(built, zoo)
        cases[spec.id] = built.manifest_entry()
        progress(spec, built)
    if prune:
        for topic_dir in sorted(p for p in zoo.iterdir() if p.is_dir()):
            for case_dir in sorted(p for p in topic_dir.iterdir() if p.is_dir()):
                if f"{topic_dir.name}/{case_dir.name}" not in cases:
                    shutil.rmtree(case_dir)
            if not any(topic_dir.iterdir()):
                topic_dir.rmdir()
    manifest = {"format": MANIFEST_FORMAT, "cases": dict(sorted(cases.items()))}
    _write_if_changed(manifest_path(zoo), _dump(manifest))
    return manifest


def case_dir(case_id: str, zoo: Path = ZOO) -> Path:
    return zoo / case_id


def tampered_files(case_id: str, entry: Mapping, zoo: Path = ZOO) -> list[str]:
    """One line per file of the case that is missing, altered, or not listed in the manifest."""
    problems = []
    folder = case_dir(case_id, zoo)
    for rel, meta in entry["files"].items():
        path = folder / rel
        shown = path.relative_to(zoo.parent) if zoo.parent in path.parents else path
        if not path.exists():
            problems.append(f"{shown}: missing")
            continue
        digest = sha256(path.read_bytes())
        if digest != meta["sha256"]:
            problems.append(f"{shown}: sha256 {digest[:12]}… differs from the manifest's {meta['sha256'][:12]}…")
    if folder.is_dir():
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if path.relative_to(folder).as_posix() not in entry["files"]:
                shown = path.relative_to(zoo.parent) if zoo.parent in path.parents else path
                problems.append(f"{shown}: not in the manifest")
    return problems


def load_datasets(case_id: str, entry: Mapping, zoo: Path = ZOO) -> list[tuple[dict, dict]]:
    """Read back every ``test_data_set_N`` as (inputs, expected outputs) by tensor name."""
    folder = case_dir(case_id, zoo)
    datasets = []
    for i in range(entry["datasets"]):
        pair = []
        for kind, declared in (("input", entry["inputs"]), ("output", entry["outputs"])):
            arrays = {}
            for k in range(len(declared)):
                tensor = onnx.TensorProto()
                tensor.ParseFromString((folder / f"test_data_set_{i}/{kind}_{k}.pb").read_bytes())
                arrays[tensor.name] = numpy_helper.to_array(tensor)
            pair.append(arrays)
        datasets.append((pair[0], pair[1]))
    return datasets
