"""make upstream's environment: without the registry it says in one line what to install and
exits 2, and it never writes to .venv."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

from upstream.env import ONNX_WEEKLY, installed_weekly


def _snapshot(folder: Path) -> dict[str, float]:
    """mtime of the folder and of every entry directly in it (pip installs add or replace entries)."""
    return {p.name: p.stat().st_mtime_ns for p in [folder, *folder.iterdir()]}


def test_offline_it_names_what_to_install_and_leaves_venv_alone(tmp_path) -> None:
    base = Path(sysconfig.get_path("purelib"))
    before = _snapshot(base)
    offline = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path), "PYTHONPATH": os.getcwd()}
    target = tmp_path / "venv-upstream"
    done = subprocess.run(
        [sys.executable, "-m", "upstream.env", "--venv", str(target)],
        capture_output=True,
        text=True,
        env=offline,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == "" and len(done.stderr.splitlines()) == 1, done.stderr
    assert ONNX_WEEKLY in done.stderr and "install" in done.stderr and "Traceback" not in done.stderr
    assert installed_weekly(target) is None
    assert not list(target.rglob("*.pth")), "the overlay is written only once the weekly is in"
    assert _snapshot(base) == before
