"""A backend team's runtime joins the matrix from outside the project.

The adapter below is the example shown on the site's "Add your runtime" page: the
whole integration is this one class.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest

from generator.cli import main
from generator.runtimes import Runner, Runtime

ROOT = Path(__file__).resolve().parent.parent


# --8<-- [start:adapter]
class OrtNoOptRuntime(Runtime):
    """onnxruntime with every graph optimization off: the kernels as the graph names them."""

    name = "onnxruntime-noopt"

    def version(self) -> str:
        import onnxruntime

        return onnxruntime.__version__

    def load(self, model_path: Path) -> Runner:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        sess = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]

        def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return dict(zip(names, sess.run(names, dict(inputs)), strict=True))

        return run


# --8<-- [end:adapter]


def _first_case() -> str:
    manifest = json.loads((ROOT / "zoo/manifest.json").read_text())
    return next(iter(manifest["cases"]))


@pytest.fixture
def verify_with(run_main, monkeypatch: pytest.MonkeyPatch):
    """``python -m generator verify CASE --json OUT ARGS`` in this process, with ``pythonpath``
    put first on its import path, as ``PYTHONPATH`` puts it for a process."""

    def verify(tmp_path: Path, *args: str, pythonpath: list[Path]) -> subprocess.CompletedProcess:
        for path in reversed(pythonpath):
            monkeypatch.syspath_prepend(str(path))
        return run_main(main, "verify", _first_case(), "--json", str(tmp_path / "matrix.json"), *args)

    return verify


@pytest.fixture
def verify_matrix(verify_with):
    def verify(tmp_path: Path, *args: str, pythonpath: list[Path]) -> dict:
        result = verify_with(tmp_path, *args, pythonpath=pythonpath)
        assert result.returncode in (0, 1), result.stderr
        return json.loads((tmp_path / "matrix.json").read_text())

    return verify


def test_runtime_option_adds_a_column(verify_matrix, tmp_path: Path) -> None:
    matrix = verify_matrix(
        tmp_path, "--runtime", "test_runtime_plugin:OrtNoOptRuntime", pythonpath=[Path(__file__).parent]
    )
    assert [rt["name"] for rt in matrix["runtimes"]][-1] == "onnxruntime-noopt"
    cell = matrix["cases"][_first_case()]["results"]["onnxruntime-noopt"]
    assert cell["status"] == matrix["cases"][_first_case()]["results"]["onnxruntime"]["status"]


def test_entry_point_plugin_is_discovered(verify_matrix, tmp_path: Path) -> None:
    """An installed package exposing the entry point needs no option at all."""
    site = tmp_path / "site"
    dist = site / "fake_backend-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-backend\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[onnx_genai_proposals.runtimes]\nnoopt = test_runtime_plugin:OrtNoOptRuntime\n"
    )
    matrix = verify_matrix(tmp_path, pythonpath=[site, Path(__file__).parent])
    assert "onnxruntime-noopt" in [rt["name"] for rt in matrix["runtimes"]]


class NeedsArguments(OrtNoOptRuntime):
    name = "needs-arguments"

    def __init__(self, device: str) -> None:
        self.device = device


class BrokenVersion(OrtNoOptRuntime):
    name = "broken-version"

    def version(self) -> str:
        raise RuntimeError("no version file")


class ReturnsNone(OrtNoOptRuntime):
    name = "returns-none"

    def load(self, model_path: Path) -> Runner:
        return lambda inputs: None


class NumberName(OrtNoOptRuntime):
    name = 42


def test_broken_plugins_get_one_line_errors(verify_with, tmp_path: Path) -> None:
    (tmp_path / "crashes_on_import.py").write_text("raise RuntimeError('missing vendor library')\n")
    expected = {
        "crashes_on_import:Anything": "cannot import it (RuntimeError: missing vendor library)",
        "test_runtime_plugin:NeedsArguments": "cannot be created without arguments (TypeError:",
        "test_runtime_plugin:BrokenVersion": "version() failed (RuntimeError: no version file)",
        "test_runtime_plugin:ReturnsNone": "its runner returned NoneType; expected a dict from output name",
        "test_runtime_plugin:NumberName": "name is 42; valid: a non-empty lowercase string",
    }
    for target, message in expected.items():
        result = verify_with(tmp_path, "--runtime", target, pythonpath=[Path(__file__).parent, tmp_path])
        assert result.returncode == 2, result.stderr
        assert message in result.stderr and result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


class EngineNotInstalled(OrtNoOptRuntime):
    """An adapter whose engine package is missing here, as tract is without the engines extra."""

    name = "engine-not-installed"

    def version(self) -> str:
        import vendor_engine_not_installed  # noqa: F401

        return "1.0"


def test_an_engine_that_is_not_installed_is_a_skipped_column(tmp_path: Path, monkeypatch, capsys) -> None:
    """Issue 23 item 10: without tract every verify exited 2 on "version() failed"."""
    from generator import cli, runtimes

    monkeypatch.setattr(runtimes, "available", lambda extra=(): [runtimes.ReferenceRuntime(), EngineNotInstalled()])
    out = tmp_path / "m.json"
    assert cli.main(["verify", _first_case(), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    notes = [line for line in printed.splitlines() if "engine-not-installed" in line]
    assert notes == [
        "note engine-not-installed skipped: its engine is not installed here (ModuleNotFoundError: No module "
        "named 'vendor_engine_not_installed'); install it to run this column"
    ]
    matrix = json.loads(out.read_text())
    assert [rt["name"] for rt in matrix["runtimes"]] == ["reference"]
    assert list(matrix["skipped"]) == ["engine-not-installed"]
    assert set(matrix["cases"][_first_case()]["results"]) == {"reference"}
    from generator.docs import matrix_markdown

    assert f"Not run where this page was built: {notes[0].removeprefix('note ')}." in matrix_markdown(matrix)
