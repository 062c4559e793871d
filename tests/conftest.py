"""Shared fixtures: the built site (made once if `make docs` has not made it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "site"


@pytest.fixture(scope="session")
def site_dir() -> Path:
    """``site/`` as `make docs` builds it (`make test` builds it before the unit tests)."""
    if not (SITE / "index.html").exists():
        env = dict(os.environ, PYTHONPATH=str(ROOT), NO_MKDOCS_2_WARNING="1")
        mkdocs = Path(sys.executable).parent / "mkdocs"
        subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(SITE)], cwd=ROOT, env=env, check=True)
    return SITE
