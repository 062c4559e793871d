"""Shared fixtures: the built site, and the zoo rebuilt from the case functions once per run
(shared by the workers of ``pytest -n``)."""

from __future__ import annotations

import json
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
    """``site/`` as `make docs` builds it (`make test` builds it before the site tests)."""
    with zoo.locked(ROOT):  # under pytest -n, one worker builds it and the other waits
        if not (SITE / "index.html").exists():
            env = dict(os.environ, PYTHONPATH=str(ROOT), NO_MKDOCS_2_WARNING="1")
            mkdocs = Path(sys.executable).parent / "mkdocs"
            subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(SITE)], cwd=ROOT, env=env, check=True)
    return SITE


class FreshZoo:
    """The zoo written from the case functions into a temporary folder, topic by topic as
    tests ask for them, each topic once per run, with this process's best kernels and torch
    at :data:`BUILD_THREADS` threads. Under ``pytest -n`` the workers share the folder: a
    lock file lets one build a topic while the others wait for it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def entries(self, topic: str) -> dict[str, dict]:
        """The manifest entries of ``topic``'s cases, freshly built and written."""
        self._write([topic])
        return {cid: e for cid, e in self._manifest()["cases"].items() if e["topic"] == topic}

    def complete(self) -> Path:
        """The folder, holding every registered case and the manifest of them all."""
        from generator.registry import topics

        self._write(topics())
        return self.path

    def _manifest(self) -> dict:
        return json.loads(zoo.manifest_path(self.path).read_text())

    def _write(self, topics: list[str]) -> None:
        import torch

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with zoo.locked(self.path.parent):
            missing = [t for t in topics if not self._done(t).exists()]
            if not missing:
                return
            specs = [spec for spec in select() if spec.topic in missing]
            threads = torch.get_num_threads()
            torch.set_num_threads(BUILD_THREADS)
            try:
                zoo.write(specs, self.path, prune=False, prune_topics=missing)
            finally:
                torch.set_num_threads(threads)
            for topic in missing:
                self._done(topic).touch()

    def _done(self, topic: str) -> Path:
        return self.path.parent / f"{topic}.written"


@pytest.fixture(scope="session")
def fresh_zoo(run_folder: Path) -> FreshZoo:
    """The zoo as `make zoo` would write it now (see :class:`FreshZoo`)."""
    return FreshZoo(run_folder / "fresh_zoo" / "zoo")
