"""Shared fixtures: the built site, and the zoo rebuilt from the case functions once per run.

Tests that use ``fresh_zoo`` carry ``pytest.mark.xdist_group("fresh_zoo")``, so that under
``pytest -n`` (`make unit`) they share one worker and the zoo is built once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from generator import zoo
from generator.registry import select

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "site"
BUILD_THREADS = 2  # torch's intra-op threads while fresh_zoo builds (test_zoo_portable)


@pytest.fixture(scope="session")
def site_dir() -> Path:
    """``site/`` as `make docs` builds it (`make test` builds it before the unit tests)."""
    if not (SITE / "index.html").exists():
        env = dict(os.environ, PYTHONPATH=str(ROOT), NO_MKDOCS_2_WARNING="1")
        mkdocs = Path(sys.executable).parent / "mkdocs"
        subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(SITE)], cwd=ROOT, env=env, check=True)
    return SITE


class FreshZoo:
    """The zoo written from the case functions into a temporary folder, topic by topic as
    tests ask for them, each topic once per run, with this process's best kernels and torch
    at :data:`BUILD_THREADS` threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.manifest: dict = {}
        self._written: set[str] = set()

    def entries(self, topic: str) -> dict[str, dict]:
        """The manifest entries of ``topic``'s cases, freshly built and written."""
        if topic not in self._written:
            self._write([topic])
        return {cid: e for cid, e in self.manifest["cases"].items() if e["topic"] == topic}

    def complete(self) -> Path:
        """The folder, holding every registered case and the manifest of them all."""
        from generator.registry import topics

        missing = [t for t in topics() if t not in self._written]
        if missing or not self._written:
            self._write(missing)
        return self.path

    def _write(self, topics: list[str]) -> None:
        import torch

        specs = [spec for spec in select() if spec.topic in topics]
        threads = torch.get_num_threads()
        torch.set_num_threads(BUILD_THREADS)
        try:
            self.manifest = zoo.write(specs, self.path, prune=False, prune_topics=topics)
        finally:
            torch.set_num_threads(threads)
        self._written.update(topics)


@pytest.fixture(scope="session")
def fresh_zoo(tmp_path_factory: pytest.TempPathFactory) -> FreshZoo:
    """The zoo as `make zoo` would write it now (see :class:`FreshZoo`)."""
    return FreshZoo(tmp_path_factory.mktemp("fresh") / "zoo")
