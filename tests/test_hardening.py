"""Issue 23's probes, one test each: concurrent and interrupted zoo writes heal, verify runs
plug-in cells under a timeout and a SystemExit guard, and inputs that used to give a traceback
with exit status 1 give one line with exit status 2. CLI tests run in process (``main``);
one subprocess test per contract checks the exit status of a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from generator import UsageError, zoo
from generator.cli import main
from generator.runtimes import ReferenceRuntime

from .test_spine import _spec

ROOT = Path(__file__).resolve().parent.parent


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    """``python -m generator ARGV`` in process: (exit status, stdout, stderr)."""
    try:
        status = main(list(argv))
    except SystemExit as stop:  # argparse's --help
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def _one_line(status: int, err: str, message: str, want: int = 2) -> None:
    assert status == want, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert message in err, err


@pytest.fixture(autouse=True)
def _reference_only(monkeypatch):
    """In-process verify runs on the reference evaluator alone (importing every engine takes
    seconds); the test that needs the engines runs in its own process."""
    monkeypatch.setattr("generator.runtimes.available", lambda extra=(): [ReferenceRuntime()])


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    out = tmp_path / "zoo"
    zoo.write([_spec()], out, prune=True)
    return out


# --- item 2: concurrent runs into one new folder --------------------------------------------


def test_a_second_run_into_a_new_folder_waits_for_the_first(tmp_path: Path) -> None:
    """The first run is between its first case file and its manifest when the second starts:
    the second used to see case files without a manifest and refuse the folder."""
    out, writing, go_on, errors = tmp_path / "new", threading.Event(), threading.Event(), []

    def first() -> None:
        zoo.write([_spec()], out, prune=False, progress=lambda spec, built: (writing.set(), go_on.wait(30)))

    def second() -> None:
        try:
            zoo.write([_spec(name="other")], out, prune=False)
        except UsageError as err:
            errors.append(err)

    one = threading.Thread(target=first)
    one.start()
    assert writing.wait(30)
    two = threading.Thread(target=second)
    two.start()
    time.sleep(0.3)
    go_on.set()
    one.join(30)
    two.join(30)
    assert errors == []
    assert sorted(json.loads((out / "manifest.json").read_text())["cases"]) == ["spine/affine", "spine/other"]


# --- item 3: interrupted writes heal --------------------------------------------------------


def test_zoo_removes_the_temporary_file_of_a_killed_write(tiny: Path) -> None:
    leftover = tiny / "spine" / "test_affine" / ".data.json.k2j_x9az.tmp"
    leftover.write_bytes(b"{")
    mine = tiny.parent / ".notes.abcdefgh.tmp"  # outside the zoo: not the writer's to remove
    mine.write_text("keep")
    with pytest.raises(UsageError, match="not in the manifest"):
        from generator.verify import verify

        verify([], (), tiny)
    zoo.write([_spec()], tiny, prune=True)
    assert not leftover.exists() and mine.exists()
    verify([], (), tiny)  # the zoo is whole again


def test_zoo_repairs_a_folder_a_killed_first_run_left(tmp_path: Path) -> None:
    out = tmp_path / "new"
    zoo.write([_spec()], out, prune=True)
    (out / "manifest.json").unlink()  # killed before the manifest was written
    (out / "spine" / "test_affine" / "data.json").unlink()
    zoo.write([_spec(), _spec(name="other")], out, prune=True)
    assert sorted(json.loads((out / "manifest.json").read_text())["cases"]) == ["spine/affine", "spine/other"]
    assert (out / "spine" / "test_affine" / "data.json").is_file()


@pytest.mark.parametrize("stray", ["notes.txt", "spine/readme.md", "spine/other_folder/x"])
def test_a_folder_with_anything_else_is_still_refused(tmp_path: Path, stray: str) -> None:
    out = tmp_path / "new"
    zoo.write([_spec()], out, prune=True)
    (out / "manifest.json").unlink()
    (out / stray).parent.mkdir(parents=True, exist_ok=True)
    (out / stray).write_text("mine")
    with pytest.raises(UsageError, match="holds no zoo"):
        zoo.write([_spec()], out, prune=True)
    assert (out / stray).read_text() == "mine"


# --- item 5: plug-ins cannot stall or bypass verify -----------------------------------------


class _Plugin(ReferenceRuntime):
    """The reference evaluator whose runner misbehaves as ``how`` says."""

    name = "plugin"
    how = ""

    def load(self, model_path: Path):
        run = super().load(model_path)

        def misbehave(inputs):
            if self.how == "hang":
                time.sleep(60)
            if self.how == "exit":
                sys.exit(0)
            if self.how == "interrupt":
                raise KeyboardInterrupt
            return run(inputs)

        return misbehave


def _plugin(how: str) -> _Plugin:
    runtime = _Plugin()
    runtime.how = how
    return runtime


def test_a_runner_that_hangs_is_an_error_cell_after_the_timeout(tiny: Path) -> None:
    from generator.verify import verify

    start = time.monotonic()
    matrix = verify([_plugin("hang"), ReferenceRuntime()], (), tiny, timeout=1.0)
    assert time.monotonic() - start < 30
    cells = matrix["cases"]["spine/affine"]["results"]
    assert cells["plugin"]["status"] == "error" and "did not finish within 1 s" in cells["plugin"]["detail"]
    assert cells["reference"]["status"] == "pass"  # the run went on


@pytest.mark.parametrize("seconds", ["0", "-1", "nan", "inf", "1e300", "abc"])
def test_a_cell_timeout_out_of_range_is_one_line(tiny: Path, tmp_path: Path, capsys, seconds: str) -> None:
    """Found by trying values: 1e300 reached threading's join and overflowed time_t (a traceback)."""
    status, _, err = _verify(capsys, tiny, tmp_path, "--cell-timeout", seconds)
    _one_line(status, err, "is not a number of seconds in (0, ")


def test_sys_exit_in_a_runner_cannot_end_verify_early(tiny: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("generator.runtimes.available", lambda extra=(): [_plugin("exit")])
    status, _, err = _run(capsys, "verify", "--zoo", str(tiny), "--json", str(tmp_path / "m.json"))
    _one_line(status, err, "runtime 'plugin': its load() or runner on spine/affine called sys.exit(0)")


def test_a_keyboard_interrupt_is_one_line(tiny: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr("generator.runtimes.available", lambda extra=(): [_plugin("interrupt")])
    status, _, err = _run(capsys, "verify", "--zoo", str(tiny), "--json", str(tmp_path / "m.json"))
    _one_line(status, err, "interrupted", want=130)


# --- item 8: inputs that gave a traceback with exit status 1 --------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def _verify(capsys, tiny: Path, tmp_path: Path, *extra: str) -> tuple[int, str, str]:
    return _run(capsys, "verify", "--zoo", str(tiny), "--json", str(tmp_path / "m.json"), *extra)


def _rehash(folder: Path, rel: str) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    path = zoo.case_dir("spine/affine", folder) / rel
    manifest["cases"]["spine/affine"]["files"][rel] = {
        "bytes": path.stat().st_size,
        "sha256": zoo.sha256(path.read_bytes()),
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_deeply_nested_manifest_is_one_line(tiny: Path, tmp_path: Path, capsys) -> None:
    (tiny / "manifest.json").write_text(DEEP)
    _one_line(*_verify(capsys, tiny, tmp_path)[::2], "nested too deeply")


def test_a_deeply_nested_baseline_is_one_line(tiny: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "baseline.json").write_text(DEEP)
    status, _, err = _verify(capsys, tiny, tmp_path, "--baseline", str(tmp_path / "baseline.json"))
    _one_line(status, err, "nested too deeply")


def test_a_deeply_nested_pipeline_json_is_one_line(tmp_path: Path, capsys) -> None:
    import shutil

    from proposals.text_pipeline.__main__ import main as pipeline_main
    from proposals.text_pipeline.folder import zoo_folder

    folder = tmp_path / "model"
    shutil.copytree(zoo_folder("llama"), folder)
    (folder / "pipeline.json").write_text(DEEP)
    status = pipeline_main(["hi", "--model-dir", str(folder)])
    _one_line(status, capsys.readouterr().err, "nested too deeply")


@pytest.mark.parametrize("key", ["decoder", "tokenizer"])
@pytest.mark.parametrize("name", ["a" * 300, "a\0b"])
def test_a_pipeline_json_name_no_file_system_holds_is_one_line(tmp_path: Path, capsys, key: str, name: str) -> None:
    """Found by the hardening probes: a 300-character decoder or tokenizer name reached stat()."""
    import shutil

    from proposals.text_pipeline.__main__ import main as pipeline_main
    from proposals.text_pipeline.folder import zoo_folder

    folder = tmp_path / "model"
    shutil.copytree(zoo_folder("llama"), folder)
    manifest = json.loads((folder / "pipeline.json").read_text())
    (folder / "pipeline.json").write_text(json.dumps({**manifest, key: name}))
    _one_line(pipeline_main(["hi", "--model-dir", str(folder)]), capsys.readouterr().err, "at most 255 bytes")


def test_a_folder_as_baseline_is_one_line(tiny: Path, tmp_path: Path, capsys) -> None:
    status, _, err = _verify(capsys, tiny, tmp_path, "--baseline", str(tmp_path))
    _one_line(status, err, "is not a file")


def test_json_under_a_file_fails_before_the_matrix_runs(tiny: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    (tmp_path / "afile").write_text("keep")

    def matrix(*args, **kwargs):
        raise AssertionError("the matrix ran")

    monkeypatch.setattr("generator.verify.verify", matrix)
    status, _, err = _run(capsys, "verify", "--zoo", str(tiny), "--json", str(tmp_path / "afile" / "x.json"))
    _one_line(status, err, "is a file, so the matrix cannot be written there")


def test_zoo_out_under_a_file_is_one_line(tmp_path: Path, capsys) -> None:
    (tmp_path / "afile").write_text("keep")
    status, _, err = _run(capsys, "zoo", "--out", str(tmp_path / "afile" / "sub"), "kv_cache/linear_prefill")
    _one_line(status, err, "is a file, so")
    assert (tmp_path / "afile").read_text() == "keep"


@pytest.mark.parametrize("flag", ["--zoo", "--json", "--baseline"])
@pytest.mark.parametrize("name", ["x" * 256, "a\0b"])
def test_impossible_path_names_are_one_line(tiny: Path, tmp_path: Path, capsys, flag: str, name: str) -> None:
    args = {"--zoo": str(tiny), "--json": str(tmp_path / "m.json"), flag: str(tmp_path / name)}
    status, _, err = _run(capsys, "verify", *(x for pair in args.items() for x in pair))
    _one_line(status, err, "NUL byte" if "\0" in name else "a file name has at most 255")


def test_zoo_out_with_an_impossible_name_is_one_line(tmp_path: Path, capsys) -> None:
    status, _, err = _run(capsys, "zoo", "--out", str(tmp_path / ("x" * 300)), "kv_cache/linear_prefill")
    _one_line(status, err, "a file name has at most 255")


@pytest.mark.parametrize("where", ["case", "file"])
def test_a_manifest_name_no_file_system_holds_is_one_line(tiny: Path, tmp_path: Path, capsys, where: str) -> None:
    """Found by the hardening probes: a 300-character case or file name reached stat() (ENAMETOOLONG)."""
    manifest = json.loads((tiny / "manifest.json").read_text())
    entry, long = manifest["cases"].pop("spine/affine"), "a" * 300
    if where == "case":
        manifest["cases"][f"spine/{long}"] = {**entry, "name": long}
    else:
        manifest["cases"]["spine/affine"] = {**entry, "files": {**entry["files"], long: {"sha256": "0" * 64}}}
    (tiny / "manifest.json").write_text(json.dumps(manifest))
    _one_line(*_verify(capsys, tiny, tmp_path)[::2], "at most 200")


def test_external_data_longer_than_its_file_is_one_line(tiny: Path, tmp_path: Path, capsys) -> None:
    from onnx import TensorProto, numpy_helper

    folder = zoo.case_dir("spine/affine", tiny)
    (folder / "y.bin").write_bytes(b"\0" * 24)
    tensor = numpy_helper.from_array(np.zeros((2, 3), np.float32), "y")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value="y.bin")
    tensor.external_data.add(key="length", value=str(1 << 40))
    (folder / "test_data_set_0/output_0.pb").write_bytes(tensor.SerializeToString())
    _rehash(tiny, "test_data_set_0/output_0.pb")
    _rehash(tiny, "y.bin")
    _one_line(*_verify(capsys, tiny, tmp_path)[::2], "which has 24")


def test_an_empty_model_is_bad_input_not_a_conformance_failure(tiny: Path, tmp_path: Path, capsys) -> None:
    (zoo.case_dir("spine/affine", tiny) / "model.onnx").write_bytes(b"")
    _rehash(tiny, "model.onnx")
    _one_line(*_verify(capsys, tiny, tmp_path)[::2], "no graph; an empty or truncated file")


def test_output_the_terminal_cannot_encode_is_escaped(tmp_path: Path, monkeypatch) -> None:
    import io

    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="ascii"))
    assert main(["zoo", "--out", str(tmp_path / "z"), "kv_cache/linear_prefill"]) == 0
    sys.stdout.flush()
    assert b"\\u2192" in raw.getvalue()  # the arrow, escaped


def test_a_closed_pipe_is_one_line_in_a_real_process(tmp_path: Path) -> None:
    """``python -m generator list | head -c1``: the exit status of the real process (the last
    flush, at exit, used to fail outside ``main`` with status 120)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "generator", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    proc.stdout.close()  # before it writes: its first flush meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 1
    assert err.count("\n") == 1 and "broken pipe" in err and "Traceback" not in err, err


# --- item 6: nothing is written to $HOME ----------------------------------------------------


def test_verify_and_pipeline_runs_leave_home_unchanged(tmp_path: Path) -> None:
    """onnxruntime(-genai) kept a device id and an event queue in ~/.cache/Microsoft, OpenVINO a
    client id and usage counts in ~/intel; one real process runs verify and the genai backends."""
    home = tmp_path / "home"
    home.mkdir()
    script = f"""
from generator.cli import main
from proposals.text_pipeline.__main__ import main as pipeline
assert main(["verify", "kv_cache/linear_prefill", "--json", {str(tmp_path / "m.json")!r}]) == 0
for backend in ("onnxruntime-genai", "openvino-genai"):
    assert pipeline(["hi", "--backend", backend, "--max-new-tokens", "2"]) == 0
"""
    env = {k: v for k, v in os.environ.items() if k not in ("ORT_DISABLE_TELEMETRY", "CI")}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.relative_to(home).as_posix() for p in home.rglob("*")) == []
