"""The committed zoo is portable: regenerating it with torch's plainest kernels on one
thread, or with the best kernels and two torch threads, gives every committed byte.

The plainest kernels need a fresh ``python -m generator zoo --out DIR`` process, since the
kernel choice (``ATEN_CPU_CAPABILITY``) and the thread pools are fixed when a process
starts. The best kernels are this process's own: the session's ``fresh_zoo``
(tests/conftest.py), built once per run with torch at two threads, which test_spine
compares topic by topic. The determinism comes from the construction (float64
references, seeded float64 weights); nothing here touches OPENBLAS_CORETYPE or
OPENBLAS_L2_SIZE.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from generator.bench import ROOT
from generator.zoo import ZOO

from .conftest import BUILD_THREADS

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
PLAIN = "default_kernels_1_thread"
PLAIN_SETTINGS = {"ATEN_CPU_CAPABILITY": "default", **dict.fromkeys(THREAD_VARIABLES, "1")}


def _environment(settings: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (*THREAD_VARIABLES, "ATEN_CPU_CAPABILITY")}
    return {**env, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "0", **settings}


def _files(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` by its relative path (no assumption on folder names)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _differences(committed: dict[str, bytes], fresh: dict[str, bytes]) -> list[str]:
    return [
        f"{name} ({'missing' if name not in fresh else 'extra' if name not in committed else 'differs'})"
        for name in sorted(committed.keys() | fresh.keys())
        if committed.get(name) != fresh.get(name)
    ]


def test_zoo_regenerates_byte_identical_with_other_kernels_and_threads(fresh_zoo, tmp_path: Path) -> None:
    plain = subprocess.Popen(
        [sys.executable, "-m", "generator", "zoo", "--out", str(tmp_path / PLAIN)],
        cwd=ROOT,
        env=_environment(PLAIN_SETTINGS),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )  # runs while this process builds its own: the test takes as long as one build
    fresh = {PLAIN: tmp_path / PLAIN, f"best_kernels_{BUILD_THREADS}_threads": fresh_zoo.complete()}
    error = plain.communicate(timeout=600)[1]
    assert plain.returncode == 0, f"{PLAIN}: {error[-2000:]}"
    committed = _files(ZOO)
    for name, folder in fresh.items():
        diff = _differences(committed, _files(folder))
        assert not diff, f"{name}: {len(diff)} files differ from zoo/: {diff[:20]}"
