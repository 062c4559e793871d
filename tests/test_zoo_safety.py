"""The writer and the verifier cannot destroy or leak data, and every malformed input is a
one-line error with exit status 2. Each test reproduces a defect found by trying the CLI."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from generator import Case, DataSet, UsageError, zoo
from generator.cli import main
from generator.registry import CaseSpec
from generator.runtimes import ReferenceRuntime
from generator.verify import verify

from .test_spine import _add_case, _spec

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def cli(run_main):
    """``python -m generator ARGS`` run in this process (test_spine runs it as a process)."""
    return lambda *args, cwd=None: run_main(main, *args, cwd=cwd)


def _one_line_error(result: subprocess.CompletedProcess, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert message in result.stderr, result.stderr


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    out = tmp_path / "zoo"
    zoo.write([_spec()], out, prune=True)
    return out


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def _set_manifest(path: Path, manifest: object) -> None:
    (path / "manifest.json").write_text(json.dumps(manifest))


# --- zoo --out never deletes what it did not write -------------------------------------------


def test_zoo_out_refuses_a_folder_that_holds_no_zoo(cli, tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    for rel in (".git/objects/ab/cdef", ".git/refs/heads/main", "proposals/kv_cache/cases.py"):
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        (clone / rel).write_text("keep")
    _one_line_error(cli("zoo", "--out", str(clone)), "is not empty and holds no zoo")
    assert sorted(p.relative_to(clone).as_posix() for p in clone.rglob("*") if p.is_file()) == [
        ".git/objects/ab/cdef",
        ".git/refs/heads/main",
        "proposals/kv_cache/cases.py",
    ]


def test_zoo_out_refuses_a_file(cli, tmp_path: Path) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("keep")
    _one_line_error(cli("zoo", "--out", str(target)), "is a file; the zoo output must be a folder")
    assert target.read_text() == "keep"


def test_full_write_removes_only_cases_it_wrote(tiny: Path) -> None:
    (tiny / "spine" / "mine").mkdir()
    (tiny / "spine" / "mine" / "notes.txt").write_text("keep")
    (tiny / "elsewhere").mkdir()
    zoo.write([_spec(name="other")], tiny, prune=True)
    assert not zoo.case_dir("spine/affine", tiny).exists()
    assert (tiny / "spine" / "mine" / "notes.txt").read_text() == "keep"
    assert (tiny / "elsewhere").is_dir()


# --- symlinks are refused, never followed ----------------------------------------------------


def test_writer_does_not_write_through_a_symlinked_file(tiny: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.onnx"
    outside.write_bytes(b"precious")
    model = zoo.case_dir("spine/affine", tiny) / "model.onnx"
    model.unlink()
    model.symlink_to(outside)
    with pytest.raises(UsageError, match="model.onnx is a symlink"):
        zoo.write([_spec()], tiny, prune=True)
    assert outside.read_bytes() == b"precious"


def test_prune_does_not_delete_through_a_symlinked_topic(tiny: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    (zoo.case_dir("spine/affine", tiny)).rename(elsewhere)
    (tiny / "spine").rmdir()
    (tiny / "spine").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(UsageError, match="spine is a symlink"):
        zoo.write([_spec(name="other")], tiny, prune=True)
    assert (elsewhere / "model.onnx").is_file()


# --- concurrent runs do not lose cases -------------------------------------------------------


def test_a_second_run_waits_for_the_lock(tiny: Path) -> None:
    done = threading.Event()

    def partial() -> None:
        zoo.write([_spec(name="other")], tiny, prune=False)
        done.set()

    with zoo.locked(tiny):
        worker = threading.Thread(target=partial)
        worker.start()
        time.sleep(0.5)
        assert not done.is_set(), "the second run did not wait for the lock"
    worker.join(30)
    assert sorted(_manifest(tiny)["cases"]) == ["spine/affine", "spine/other"]


def test_files_are_replaced_atomically(tiny: Path) -> None:
    zoo.write([_spec(lambda: _add_case(3.0))], tiny, prune=True)
    leftovers = [p.name for p in tiny.rglob(".*.tmp")]
    assert leftovers == []


# --- verify reads nothing outside the zoo ----------------------------------------------------


@pytest.mark.parametrize("key", ["../../../../etc/passwd", "/etc/passwd", "test_data_set_0/../../x"])
def test_verify_refuses_manifest_paths_that_leave_the_case(tiny: Path, key: str) -> None:
    manifest = _manifest(tiny)
    manifest["cases"]["spine/affine"]["files"][key] = {"bytes": 1, "sha256": "0" * 64}
    _set_manifest(tiny, manifest)
    with pytest.raises(UsageError, match="not a relative path inside the case folder"):
        verify([ReferenceRuntime()], zoo=tiny)


def test_verify_refuses_case_ids_that_leave_the_zoo(tiny: Path) -> None:
    manifest = _manifest(tiny)
    manifest["cases"]["../../elsewhere/x"] = manifest["cases"]["spine/affine"]
    _set_manifest(tiny, manifest)
    with pytest.raises(UsageError, match=r"case id '../../elsewhere/x' is not topic/case"):
        verify([ReferenceRuntime()], zoo=tiny)


def test_verify_refuses_symlinked_files_and_folders(tiny: Path, tmp_path: Path) -> None:
    data = zoo.case_dir("spine/affine", tiny) / "test_data_set_0"
    copy = tmp_path / "copy"
    data.rename(copy)
    data.symlink_to(copy, target_is_directory=True)
    with pytest.raises(UsageError, match="test_data_set_0 is a symlink"):
        verify([ReferenceRuntime()], zoo=tiny)


def test_verify_flags_unlisted_case_and_topic_folders(tiny: Path) -> None:
    (tiny / "spine" / "test_smuggled").mkdir()
    (tiny / "other_topic").mkdir()
    with pytest.raises(UsageError) as err:
        verify([ReferenceRuntime()], zoo=tiny)
    assert "spine/test_smuggled: a case folder the manifest does not list" in str(err.value)
    assert "other_topic: not a topic of the manifest" in str(err.value)


# --- malformed input is one line, exit 2 -----------------------------------------------------


def _malformed(manifest: dict) -> list[tuple[object, str]]:
    entry = manifest["cases"]["spine/affine"]
    return [
        ([], "is not a format-2 zoo manifest"),
        ({**manifest, "cases": {"spine/affine": None}}, "entry is NoneType, not an object"),
        ({**manifest, "cases": {"spine/affine": {k: v for k, v in entry.items() if k != "files"}}}, "'files'"),
        ({**manifest, "cases": {"spine/affine": {**entry, "atol": "big"}}}, "'atol' is 'big'"),
    ]


def test_malformed_manifests_are_one_line_errors(cli, tiny: Path, tmp_path: Path) -> None:
    for bad, message in _malformed(_manifest(tiny)):
        _set_manifest(tiny, bad)
        _one_line_error(cli("verify", "--zoo", str(tiny), "--json", str(tmp_path / "m.json")), message)


def _rehash(folder: Path, rel: str) -> None:
    manifest = _manifest(folder)
    path = zoo.case_dir("spine/affine", folder) / rel
    meta = {"bytes": path.stat().st_size, "sha256": zoo.sha256(path.read_bytes())}
    manifest["cases"]["spine/affine"]["files"][rel] = meta
    _set_manifest(folder, manifest)


def test_a_garbage_pb_with_an_updated_hash_is_one_line(cli, tiny: Path, tmp_path: Path) -> None:
    (zoo.case_dir("spine/affine", tiny) / "test_data_set_0/output_0.pb").write_bytes(b"\xff\xff garbage")
    _rehash(tiny, "test_data_set_0/output_0.pb")
    _one_line_error(cli("verify", "--zoo", str(tiny), "--json", str(tmp_path / "m.json")), "is not a TensorProto")


def _external_output(folder: Path, location: str) -> None:
    tensor = numpy_helper.from_array(np.zeros((2, 3), np.float32), "y")
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    (zoo.case_dir("spine/affine", folder) / "test_data_set_0/output_0.pb").write_bytes(tensor.SerializeToString())
    _rehash(folder, "test_data_set_0/output_0.pb")


def test_external_data_outside_the_case_is_refused(cli, tiny: Path, tmp_path: Path) -> None:
    (tmp_path / "secret.bin").write_bytes(np.zeros(6, np.float32).tobytes())
    _external_output(tiny, "../../../secret.bin")
    _one_line_error(
        cli("verify", "--zoo", str(tiny), "--json", str(tmp_path / "m.json")),
        "is not a relative path inside the case folder",
    )


def test_external_data_is_read_from_the_case_folder_not_the_cwd(cli, tiny: Path, tmp_path: Path) -> None:
    expected = _add_case().datasets[0].outputs["y"]
    (zoo.case_dir("spine/affine", tiny) / "y.bin").write_bytes(expected.tobytes())
    (tmp_path / "y.bin").write_bytes(np.full(6, 99, np.float32).tobytes())  # a decoy in the cwd
    _external_output(tiny, "y.bin")
    _rehash(tiny, "y.bin")
    result = cli("verify", "--zoo", str(tiny), "--json", str(tmp_path / "m.json"), "--runtime", "x:Y", cwd=tmp_path)
    assert "runtime 'x:Y': cannot import it" in result.stderr  # the zoo itself was accepted
    matrix = verify([ReferenceRuntime()], zoo=tiny)
    assert matrix["cases"]["spine/affine"]["results"]["reference"]["status"] == "pass"


def test_verify_json_may_not_overwrite_the_zoo(cli, tiny: Path) -> None:
    before = (tiny / "manifest.json").read_bytes()
    _one_line_error(cli("verify", "--zoo", str(tiny), "--json", str(tiny / "manifest.json")), "is inside the zoo")
    assert (tiny / "manifest.json").read_bytes() == before


def test_verify_json_naming_a_folder_is_one_line(cli, tiny: Path, tmp_path: Path) -> None:
    _one_line_error(cli("verify", "--zoo", str(tiny), "--json", str(tmp_path)), "is a folder; give a file name")


def test_new_proposal_refuses_a_name_with_a_newline(cli) -> None:
    _one_line_error(cli("new-proposal", "abc\n"), "invalid proposal name 'abc\\n'")
    assert not (ROOT / "proposals" / "abc\n").exists()


def test_snippets_refuses_a_site_url_that_is_not_one(cli) -> None:
    _one_line_error(cli("snippets", "--site-url", "notaurl"), "is not an absolute http(s) address")


def test_spec_with_unsafe_name_is_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is not topic/case"):
        zoo.write([CaseSpec("spine", "../x", "Bad.", _add_case)], tmp_path / "zoo", prune=True)


def test_a_topic_run_drops_that_topics_stale_cases(tiny: Path) -> None:
    zoo.write([_spec(name="other")], tiny, prune=False, prune_topics=["spine"])
    assert sorted(_manifest(tiny)["cases"]) == ["spine/other"]
    assert not zoo.case_dir("spine/affine", tiny).exists()


def test_a_scalar_input_keeps_its_rank(tmp_path: Path) -> None:
    from onnx import helper

    from generator.onnx_build import make_model, tensor_info

    def scalar_case():
        x = np.array(3.0, np.float32)
        graph = helper.make_graph(
            [helper.make_node("Neg", ["x"], ["y"])], "neg", [tensor_info("x", x)], [tensor_info("y", x)]
        )
        return Case(make_model(graph, {"": 21}), [DataSet({"x": x}, {"y": -x})])

    zoo.write([CaseSpec("spine", "scalar", "A scalar.", scalar_case)], tmp_path / "zoo", prune=True)
    tensor = onnx.load_tensor(str(zoo.case_dir("spine/scalar", tmp_path / "zoo") / "test_data_set_0/input_0.pb"))
    assert list(tensor.dims) == []
