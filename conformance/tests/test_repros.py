"""Every repro folder is what conformance.repros writes, and its script says what really happened:
exit 1 and ``REPRODUCED`` while the difference (or the recorded error) is there, 0 and ``FIXED``
once the runtime follows the spec, 2 and ``COULD NOT RUN`` when a package or file is missing or
the runtime fails in another way; always one line."""

from __future__ import annotations

import functools
import importlib.util
import runpy
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conformance import repros
from conformance.examples import single_node_model

# Fixed in the pinned version (the script then says FIXED), or only shown on some CPUs.
FIXED_HERE = {"onnx-tensorscatter-circular-batch-wrap": "fixed by onnx#8353 in onnx 1.23"}
CPU_DEPENDENT = {"openvino-bf16-default-precision": "needs a CPU with bf16"}


@functools.cache
def _recorded_error(repro: repros.Repro) -> str:
    """The error text the repro records ('' when it records output values)."""
    actual = repro.actual(repro.build()[1])
    return " ".join(actual.split()) if isinstance(actual, str) else ""


def _missing_packages(repro: repros.Repro) -> list[str]:
    return [p for p in repro.packages if importlib.util.find_spec(p) is None]


@pytest.mark.parametrize("repro", repros.ALL, ids=lambda r: r.slug)
def test_committed_folder_is_regenerated_byte_for_byte(repro, tmp_path) -> None:
    fresh = repros.write(repro, tmp_path)
    committed = repros.REPROS / repro.slug
    names = sorted(p.name for p in fresh.iterdir())
    assert names == sorted(p.name for p in committed.iterdir())
    for name in names:
        if name != "ISSUE.md":  # versions of the installed packages may differ
            assert (fresh / name).read_bytes() == (committed / name).read_bytes(), name


@pytest.mark.parametrize("repro", repros.ALL, ids=lambda r: r.slug)
def test_script_shows_the_difference_or_flags_it_fixed(repro) -> None:
    """In a real process: the exit status is what an upstream maintainer sees."""
    if _missing_packages(repro):
        pytest.skip(f"{', '.join(_missing_packages(repro))} not installed (the optional engines extra)")
    folder = repros.REPROS / repro.slug
    assert len((folder / "repro.py").read_text().splitlines()) <= 20
    done = subprocess.run([sys.executable, "repro.py"], cwd=folder, capture_output=True, text=True, timeout=120)
    assert done.stdout.count("\n") == 1 and "Traceback" not in done.stderr, done.stdout + done.stderr
    if repro.slug in FIXED_HERE:
        assert (done.returncode, done.stdout[:6]) == (0, "FIXED:"), "reproduces again: " + done.stdout
    elif repro.slug in CPU_DEPENDENT:
        assert done.returncode in (0, 1), done.stdout
    else:
        assert (done.returncode, done.stdout[:11]) == (1, "REPRODUCED:"), (
            f"{repro.slug} no longer reproduces: fixed upstream? remove its divergence row. {done.stdout}"
        )


@pytest.mark.parametrize(
    "repro",
    [r for r in repros.ALL if r.slug not in FIXED_HERE | CPU_DEPENDENT and not _recorded_error(r)],
    ids=lambda r: r.slug,
)
def test_expected_and_actual_really_differ(repro) -> None:
    _, inputs, expected = repro.build()
    actual = repro.actual(inputs)
    assert any(not np.allclose(actual[n], expected[n], rtol=repro.rtol, atol=repro.atol) for n in expected)


@pytest.mark.parametrize("repro", [r for r in repros.ALL if _recorded_error(r)], ids=lambda r: r.slug)
def test_an_error_repro_records_the_error_its_script_looks_for(repro, tmp_path) -> None:
    """The script reproduces only on the recorded error, never on any exception."""
    error = _recorded_error(repro)
    assert len(error) > 20, "too short to tell this error from another"
    assert (
        f"ERROR = pathlib.Path(__file__).parent, {error!r}" in (repros.write(repro, tmp_path) / "repro.py").read_text()
    )


# --- each exit status, on a repro written for the test (run in process) ----------------------


def _identity():
    x = np.asarray([1.0, -2.0], np.float32)
    return single_node_model("Identity", 21, {"X": x}, {"Y": x}), {"X": x}, {"Y": x}


IDENTITY = repros.Repro(
    "test-identity", "onnx/onnx", "Identity", "reference", _identity, lambda f: {"Y": f["X"] + 1}, "Y = X", ("onnx",)
)


def _script(folder: Path, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as stop:
        runpy.run_path(str(folder / "repro.py"), run_name="__main__")
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and not err, out + err
    return stop.value.code, out


def test_fixed_exits_0(tmp_path, capsys) -> None:
    assert _script(repros.write(IDENTITY, tmp_path), capsys) == (0, "FIXED: every output matches the spec reference\n")


def test_a_value_difference_exits_1(tmp_path, capsys) -> None:
    def wrong():
        model, inputs, expected = _identity()
        return model, inputs, {"Y": expected["Y"] + 1}

    status, out = _script(repros.write(replace(IDENTITY, build=wrong), tmp_path), capsys)
    assert status == 1 and out.startswith("REPRODUCED: Y expected [ 2. -1.] got [ 1. -2.]")


def _raising(monkeypatch, body: str) -> None:
    monkeypatch.setitem(repros.RUNNERS, "raising", ("onnx", body))


def test_the_recorded_error_exits_1(tmp_path, capsys, monkeypatch) -> None:
    _raising(monkeypatch, "raise RuntimeError('no kernel for\\nSwish(24) here')")
    repro = replace(IDENTITY, runner="raising", actual=lambda f: "no kernel for Swish(24)")
    assert _script(repros.write(repro, tmp_path), capsys) == (
        1,
        "REPRODUCED: RuntimeError: no kernel for Swish(24) here\n",
    )


@pytest.mark.parametrize("recorded", ["", "no kernel for Swish(24)"])
def test_another_error_exits_2(tmp_path, capsys, monkeypatch, recorded) -> None:
    """A crash is not a reproduction, even of a repro that records an error."""
    _raising(monkeypatch, "raise MemoryError('out of memory')")
    repro = replace(IDENTITY, runner="raising", actual=lambda f: recorded or {"Y": f["X"]})
    status, out = _script(repros.write(repro, tmp_path), capsys)
    assert (status, out) == (2, "COULD NOT RUN (another error): MemoryError: out of memory\n")


def test_an_empty_error_message_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    _raising(monkeypatch, "raise ValueError()")
    status, out = _script(repros.write(replace(IDENTITY, runner="raising"), tmp_path), capsys)
    assert (status, out) == (2, "COULD NOT RUN (another error): ValueError:\n")


def test_a_missing_package_exits_2(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setitem(repros.RUNNERS, "absent", ("no_such_runtime_package", "got = {}"))
    status, out = _script(repros.write(replace(IDENTITY, runner="absent"), tmp_path), capsys)
    assert status == 2 and out.startswith(
        "COULD NOT RUN: ModuleNotFoundError: No module named 'no_such_runtime_package'"
    )


@pytest.mark.parametrize("name", ["expected_Y.npy", "input_X.npy", "model.onnx"])
def test_a_missing_file_exits_2(tmp_path, capsys, name) -> None:
    folder = repros.write(IDENTITY, tmp_path)
    (folder / name).unlink()
    status, out = _script(folder, capsys)
    assert status == 2 and out.startswith("COULD NOT RUN") and name.split(".")[0].split("_")[-1] in out, out
