"""Fixtures for every test folder (tests/, proposals/*/tests, conformance/tests).

See CONTRIBUTING.md, "Writing fast tests".
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

Main = Callable[[Sequence[str] | None], int]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that read the built site (``site_dir``) are marked ``site``: `make test` runs
    the others beside the docs build, then these."""
    for item in items:
        if "site_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.site)


@pytest.fixture
def run_main(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """Run a command line's ``main(argv)`` in this process, as ``python -m`` runs it, and
    return its exit status and what it wrote, like ``subprocess.run(..., text=True)``.

    A subprocess imports torch and onnxruntime again (seconds each); each CLI keeps one
    subprocess test of its exit status, and its other error tests call ``main`` here.
    """

    def run(main: Main, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()  # drop what the test printed before
        try:
            code = main(list(args))
        except SystemExit as exit_:  # --help and --version exit through argparse
            code = exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 1
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(list(args), code, out, err)

    return run


@pytest.fixture(scope="session")
def run_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of this test run that every ``pytest -n`` worker sees (each worker's
    ``tmp_path`` is its own): build something expensive once per run into it, holding
    ``generator.zoo.locked(folder)`` (an flock), and let the other workers read it."""
    base = tmp_path_factory.getbasetemp()
    # under xdist each worker's folder is <run>/popen-gwN: the run's own folder is shared
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
