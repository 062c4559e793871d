"""Zoo writer and reader: the ONNX backend-test layout plus a sha256 manifest.

``zoo/<topic>/test_<case>/model.onnx``, ``data.json`` (the case's rtol and atol, which
onnx's loader reads) and ``test_data_set_N/{input,output}_K.pb``, with
``zoo/manifest.json`` describing every case and hashing every file. The topic is the
loader's *kind*: ``onnx.backend.test.loader.load_model_tests("zoo", kind="kv_cache")``.

Writing is byte-deterministic: models are stamped (IR version, producer) and serialized
with protobuf's deterministic encoding; files whose bytes did not change are not touched.
Writing is also safe: files are replaced atomically, a lock on the zoo folder serialises
concurrent runs, symlinks are refused, and only files the manifest says this writer wrote
are ever deleted. Reading refuses every path that would leave the zoo.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
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
MANIFEST_FORMAT = 2  # 2: case folders are test_<case>, with data.json
MAX_FILE_BYTES = 1 << 20  # reference models stay small: no git-lfs, fast clones
CASE_PREFIX = "test_"  # onnx's backend-test loader and Runner need it
TOLERANCES_NAME = "data.json"
# Topic and case names: Python identifiers; file path components. At most 200 characters, so
# that "test_" + name and a temporary file's ".name.XXXXXXXX.tmp" stay within 255 bytes.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,199}")
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
                # np.ascontiguousarray would turn a 0-d input into shape [1]
                tensor = numpy_helper.from_array(np.asarray(array, order="C"), value.name)
                files[f"test_data_set_{i}/{kind[:-1]}_{k}.pb"] = tensor.SerializeToString(deterministic=True)
    files[TOLERANCES_NAME] = _dump({"atol": case.atol, "rtol": case.rtol})
    for path, data in case.files.items():
        if path in files or path.startswith("test_data_set_") or not _safe_relative(path):
            raise UsageError(f"case {spec.id}: extra file name {path!r} is reserved or unsafe")
        files[path] = bytes(data)
    for path, data in files.items():
        if len(data) > MAX_FILE_BYTES:
            raise UsageError(
                f"case {spec.id}: {path} is {len(data)} bytes; zoo files stay under "
                f"{MAX_FILE_BYTES} bytes (shrink the model)"
            )
    return BuiltCase(spec, case, files)


# --- paths: nothing read or written may leave the zoo -------------------------------------


def split_id(case_id: object) -> tuple[str, str]:
    """``(topic, case)`` of a ``topic/case`` id; anything else is refused (it could name a
    path outside the zoo)."""
    parts = case_id.split("/") if isinstance(case_id, str) else []
    if len(parts) != 2 or not all(_NAME.fullmatch(p) for p in parts):
        raise UsageError(
            f"case id {str(case_id)[:80]!r} is not topic/case (each a Python identifier of at most 200 "
            "characters); it would name a path outside the zoo or one no file system holds"
        )
    return parts[0], parts[1]


def case_dir(case_id: str, zoo: Path = ZOO) -> Path:
    """``zoo/<topic>/test_<case>``: the backend-test folder of a ``topic/case`` id."""
    topic, name = split_id(case_id)
    return zoo / topic / f"{CASE_PREFIX}{name}"


def _safe_relative(rel: object) -> bool:
    return isinstance(rel, str) and all(_PART.fullmatch(p) for p in rel.split("/"))


def _shown(path: Path, zoo: Path) -> str:
    return str(path.relative_to(zoo.parent)) if zoo.parent in path.parents else str(path)


def refuse_symlinks(path: Path, zoo: Path) -> None:
    """A one-line error if ``zoo`` or any component of ``path`` below it is a symlink."""
    rel = path.relative_to(zoo)
    for part in (zoo, *(zoo / Path(*rel.parts[: i + 1]) for i in range(len(rel.parts)))):
        if part.is_symlink():
            raise UsageError(f"{_shown(part, zoo)} is a symlink; the zoo holds plain files and folders only")


def zoo_file(case_id: str, rel: str, zoo: Path = ZOO) -> Path:
    """The path of a case's file, after checking that it stays inside the case folder."""
    if not _safe_relative(rel):
        raise UsageError(
            f"{manifest_path(zoo)}: case {case_id} lists the file {rel!r}, which is not a relative path "
            "inside its case folder (letters, digits, '_', '-', '.', '/'; no '..'; parts of at most 200)"
        )
    path = case_dir(case_id, zoo) / rel
    refuse_symlinks(path, zoo)
    return path


# --- writing ---------------------------------------------------------------------------------


def _write_if_changed(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically (a temporary file, then rename) unless it already holds
    ``data``; a reader never sees half a file."""
    if path.is_file() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_files(folder: Path, rels: Iterable[str], zoo: Path) -> None:
    """Delete the listed files (which this writer wrote) and the folders they leave empty."""
    for rel in sorted(rels, reverse=True):
        if not _safe_relative(rel):
            continue
        path = folder / rel
        refuse_symlinks(path, zoo)
        if path.is_file():
            path.unlink()
        for parent in path.relative_to(folder).parents:
            here = folder / parent
            if here != folder and here.is_dir() and not any(here.iterdir()):
                here.rmdir()


def write_case(built: BuiltCase, zoo: Path, previous: Mapping | None = None) -> None:
    """Write one case folder; files the previous manifest entry listed and the case no
    longer produces are removed (nothing else is)."""
    folder = case_dir(built.spec.id, zoo)
    for rel, data in built.files.items():
        path = folder / rel
        refuse_symlinks(path, zoo)
        _write_if_changed(path, data)
    if previous is not None:
        _remove_files(folder, set(previous.get("files", {})) - set(built.files), zoo)


def _remove_case(case_id: str, entry: Mapping, zoo: Path) -> None:
    """Remove a case this writer wrote: its listed files, then its folder and topic if empty."""
    folder = case_dir(case_id, zoo)
    refuse_symlinks(folder, zoo)
    _remove_files(folder, entry.get("files", {}), zoo)
    for here in (folder, folder.parent):
        if here.is_dir() and not any(here.iterdir()):
            here.rmdir()


def _check_out_path(zoo: Path) -> None:
    """Refuse an output that is a symlink or a file, or that cannot be a folder."""
    if zoo.is_symlink():
        raise UsageError(f"{zoo} is a symlink; give the zoo folder itself")
    if zoo.exists() and not zoo.is_dir():
        raise UsageError(f"{zoo} is a file; the zoo output must be a folder (new, empty, or an existing zoo)")
    above = next((p for p in zoo.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise UsageError(f"{above} is a file, so {zoo} cannot be created; give a folder for the zoo output")


def _make_out_folder(zoo: Path) -> None:
    try:
        zoo.mkdir(parents=True, exist_ok=True)
    except OSError as err:  # a read-only parent, a name too long, a NUL byte
        raise UsageError(f"cannot create the zoo folder {zoo} ({err.strerror or err})"[:300]) from None


def _check_out_folder(zoo: Path) -> None:
    """Under the lock: refuse a non-empty folder that holds no zoo, unless it holds only what a
    killed first run of this writer left (topic folders of case folders), which it repairs."""
    if any(zoo.iterdir()) and not manifest_path(zoo).is_file() and not _interrupted_first_run(zoo):
        raise UsageError(
            f"{zoo} is not empty and holds no zoo ({MANIFEST_NAME} is missing); "
            "give a new or empty folder, or an existing zoo"
        )


def _interrupted_first_run(zoo: Path) -> bool:
    """True if every entry is a plain topic folder holding only plain ``test_<case>`` folders:
    what a first run killed before it wrote the manifest leaves behind."""
    for topic in zoo.iterdir():
        if topic.is_symlink() or not topic.is_dir() or not _NAME.fullmatch(topic.name):
            return False
        for case in topic.iterdir():
            name = case.name.removeprefix(CASE_PREFIX)
            if case.is_symlink() or not case.is_dir() or name == case.name or not _NAME.fullmatch(name):
                return False
            if any(path.is_symlink() for path in case.rglob("*")):
                return False
    return True


# mkstemp's names in _write_if_changed: "." + file name + "." + 8 random characters + ".tmp"
_LEFTOVER = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


def _remove_leftovers(zoo: Path) -> list[Path]:
    """Under the lock, delete the temporary files of a write that was killed before its rename
    (no other run can be writing one); nothing else matches their names."""
    removed = []
    for path in sorted(zoo.rglob(".*.tmp")):
        if _LEFTOVER.fullmatch(path.name) and path.is_file() and not path.is_symlink():
            path.unlink()
            removed.append(path)
    return removed


@contextlib.contextmanager
def locked(zoo: Path) -> Iterator[None]:
    """Hold an exclusive lock on the zoo folder, so that concurrent runs cannot lose cases."""
    fd = os.open(zoo, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write(
    specs: Iterable[CaseSpec],
    zoo: Path = ZOO,
    *,
    prune: bool,
    prune_topics: Iterable[str] = (),
    progress: Callable[[CaseSpec, BuiltCase], None] = lambda spec, built: None,
) -> dict:
    """Build and write ``specs``; with ``prune`` (a full run) remove the cases the previous
    manifest lists that are no longer registered, and with ``prune_topics`` (a run of whole
    topics) those of the named topics."""
    _check_out_path(zoo)
    if zoo.is_dir():
        _check_out_folder(zoo)  # early, before the builds; again under the lock
    built_cases = [build(spec) for spec in specs]  # every case builds before any file changes
    _make_out_folder(zoo)
    with locked(zoo):  # before the folder is inspected: a concurrent first run may be writing it
        _check_out_folder(zoo)
        _remove_leftovers(zoo)
        old = load_manifest(zoo)["cases"] if manifest_path(zoo).exists() else {}
        stale_topics = set(prune_topics)
        cases = {} if prune else {cid: e for cid, e in old.items() if split_id(cid)[0] not in stale_topics}
        for built in built_cases:
            write_case(built, zoo, old.get(built.spec.id))
            cases[built.spec.id] = built.manifest_entry()
            progress(built.spec, built)
        for case_id in sorted(set(old) - set(cases)):
            _remove_case(case_id, old[case_id], zoo)
        manifest = {"format": MANIFEST_FORMAT, "cases": dict(sorted(cases.items()))}
        refuse_symlinks(manifest_path(zoo), zoo)
        _write_if_changed(manifest_path(zoo), _dump(manifest))
    return manifest


# --- reading ---------------------------------------------------------------------------------


def manifest_path(zoo: Path = ZOO) -> Path:
    return zoo / MANIFEST_NAME


def _dump(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


def _entry_problem(case_id: str, entry: object) -> str:
    """What is wrong with one manifest entry, or ''."""
    if not isinstance(entry, dict):
        return f"entry is {type(entry).__name__}, not an object"
    topic, name = split_id(case_id)
    if (entry.get("topic"), entry.get("name")) != (topic, name):
        return f"'topic'/'name' are {entry.get('topic')!r}/{entry.get('name')!r}, not {topic!r}/{name!r}"
    if not isinstance(entry.get("description"), str):
        return "'description' must be a string"
    for key in ("rtol", "atol"):
        if not _is_number(entry.get(key)):
            return f"{key!r} is {entry.get(key)!r}; it must be a finite number >= 0"
    datasets = entry.get("datasets")
    if not (isinstance(datasets, int) and not isinstance(datasets, bool) and datasets >= 1):
        return f"'datasets' is {datasets!r}; it must be a whole number >= 1"
    for key in ("inputs", "outputs"):
        values = entry.get(key)
        named = isinstance(values, list) and all(isinstance(v, dict) and isinstance(v.get("name"), str) for v in values)
        if not named:
            return f"{key!r} must be a list of objects with a 'name'"
    divergences = entry.get("divergences", {})
    if not (isinstance(divergences, dict) and all(isinstance(v, str) for v in divergences.values())):
        return "'divergences' must map runtime names to reasons (strings)"
    files = entry.get("files")
    if not isinstance(files, dict) or "model.onnx" not in files:
        return "'files' must be an object that lists model.onnx"
    for rel, meta in files.items():
        if not _safe_relative(rel):
            return (
                f"file {rel[:80]!r} is not a relative path inside the case folder "
                "(no '..', no absolute paths, parts of at most 200 characters)"
            )
        if not (isinstance(meta, dict) and isinstance(meta.get("sha256"), str) and _SHA256.fullmatch(meta["sha256"])):
            return f"file {rel!r} needs a 'sha256' of 64 lowercase hex digits"
    return ""


def load_manifest(zoo: Path = ZOO) -> dict:
    """The manifest as written by :func:`write`, checked entry by entry; a clear one-line
    error if it is missing, unreadable or malformed."""
    path = manifest_path(zoo)
    if not path.exists():
        raise UsageError(f"no zoo manifest at {path}; run `make zoo` first")
    refuse_symlinks(path, zoo)
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UsageError(f"{path} is not valid JSON ({err}); run `make zoo` to regenerate") from None
    except RecursionError:
        raise UsageError(f"{path} is JSON nested too deeply to be a manifest; run `make zoo` to regenerate") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise UsageError(f"{path} is not a format-{MANIFEST_FORMAT} zoo manifest; run `make zoo` to regenerate")
    if not isinstance(manifest.get("cases"), dict):
        raise UsageError(f"{path}: 'cases' must be an object of topic/case ids; run `make zoo` to regenerate")
    for case_id, entry in manifest["cases"].items():
        problem = _entry_problem(case_id, entry)
        if problem:
            raise UsageError(f"{path}: case {case_id}: {problem}; run `make zoo` to regenerate")
    return manifest


def tampered_files(case_id: str, entry: Mapping, zoo: Path = ZOO) -> list[str]:
    """One line per file of the case that is missing, altered, a symlink, or not listed in
    the manifest."""
    problems = []
    folder = case_dir(case_id, zoo)
    for rel, meta in entry["files"].items():
        path = zoo_file(case_id, rel, zoo)
        if not path.is_file():
            problems.append(f"{_shown(path, zoo)}: missing")
            continue
        digest = sha256(path.read_bytes())
        if digest != meta["sha256"]:
            problems.append(
                f"{_shown(path, zoo)}: sha256 {digest[:12]}… differs from the manifest's {meta['sha256'][:12]}…"
            )
    if folder.is_dir():
        for path in sorted(folder.rglob("*")):
            if path.is_symlink():
                problems.append(f"{_shown(path, zoo)}: a symlink (the zoo holds plain files only)")
            elif path.is_file() and path.relative_to(folder).as_posix() not in entry["files"]:
                problems.append(f"{_shown(path, zoo)}: not in the manifest")
    return problems


def unlisted_folders(manifest: Mapping, zoo: Path = ZOO) -> list[str]:
    """One line per topic or case folder (or stray file) in the zoo that the manifest does
    not list: a zoo with unlisted cases is not the zoo the manifest describes."""
    listed = {case_dir(cid, zoo) for cid in manifest["cases"]}
    topics = {folder.parent for folder in listed}
    problems = []
    for path in sorted(zoo.iterdir()):
        if path.name == MANIFEST_NAME and not path.is_symlink():
            continue
        if path.is_symlink():
            problems.append(f"{_shown(path, zoo)}: a symlink (the zoo holds plain files and folders only)")
        elif path not in topics:
            problems.append(f"{_shown(path, zoo)}: not a topic of the manifest")
        else:
            for child in sorted(path.iterdir()):
                if child.is_symlink():
                    problems.append(f"{_shown(child, zoo)}: a symlink (the zoo holds plain files and folders only)")
                elif child not in listed:
                    problems.append(f"{_shown(child, zoo)}: a case folder the manifest does not list")
    return problems


def _external_data_problem(tensor: onnx.TensorProto, folder: Path) -> str:
    """'' if the tensor's external data (if any) is a plain file inside ``folder``."""
    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        return ""
    location = next((kv.value for kv in tensor.external_data if kv.key == "location"), "")
    if not _safe_relative(location):
        return f"its external data {location!r} is not a relative path inside the case folder"
    target = folder / location
    if target.is_symlink() or not target.is_file():
        return f"its external data {location!r} is not a plain file in the case folder"
    fields = {kv.key: kv.value for kv in tensor.external_data}
    try:
        offset, length = int(fields.get("offset") or 0), fields.get("length")
        end = offset + int(length) if length is not None else offset
    except ValueError:
        return f"its external data offset/length {fields.get('offset')!r}/{fields.get('length')!r} are not integers"
    size = target.stat().st_size
    if offset < 0 or end < offset or end > size:
        return f"its external data asks for bytes {offset}..{end} of {location!r}, which has {size}"
    return ""


def model_problem(model_path: Path) -> str:
    """'' if ``model_path`` parses as a ModelProto whose external data stays in its folder."""
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except Exception as err:  # noqa: BLE001 - a garbage file raises protobuf's DecodeError, or others
        return f"not a valid ONNX model ({type(err).__name__})"
    if not model.HasField("graph"):  # an empty file parses as an empty ModelProto
        return "not a valid ONNX model (no graph; an empty or truncated file)"
    from onnx.external_data_helper import _get_all_tensors

    for tensor in _get_all_tensors(model):
        problem = _external_data_problem(tensor, model_path.parent)
        if problem:
            return f"initializer {tensor.name!r}: {problem}"
    return ""


def read_tensor(path: Path, zoo: Path, name: str, dtype: str) -> np.ndarray:
    """A ``.pb`` of the zoo as an array: it must parse, carry the declared name and dtype,
    and keep any external data inside its case folder."""
    shown = _shown(path, zoo)
    tensor = onnx.TensorProto()
    try:
        tensor.ParseFromString(path.read_bytes())
    except Exception as err:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise UsageError(f"{shown} is not a TensorProto ({type(err).__name__}); run `make zoo` to regenerate") from None
    problem = _external_data_problem(tensor, path.parent.parent)
    if problem:
        raise UsageError(f"{shown}: {problem}")
    if tensor.name != name:
        raise UsageError(f"{shown} holds tensor {tensor.name!r}, but the manifest declares {name!r} there")
    try:
        array = numpy_helper.to_array(tensor, base_dir=str(path.parent.parent))
    except Exception as err:  # noqa: BLE001 - inconsistent dims/data
        raise UsageError(f"{shown} is not a readable tensor ({type(err).__name__}: {err})"[:300]) from None
    if array.dtype.name != dtype:
        raise UsageError(f"{shown} holds {array.dtype.name}, but the manifest declares {dtype} for {name!r}")
    return array


def load_datasets(case_id: str, entry: Mapping, zoo: Path = ZOO) -> list[tuple[dict, dict]]:
    """Read back every ``test_data_set_N`` as (inputs, expected outputs) by tensor name."""
    datasets = []
    for i in range(entry["datasets"]):
        pair = []
        for kind, declared in (("input", entry["inputs"]), ("output", entry["outputs"])):
            arrays = {}
            for k, value in enumerate(declared):
                path = zoo_file(case_id, f"test_data_set_{i}/{kind}_{k}.pb", zoo)
                arrays[value["name"]] = read_tensor(path, zoo, value["name"], str(value.get("dtype")))
            pair.append(arrays)
        datasets.append((pair[0], pair[1]))
    return datasets
