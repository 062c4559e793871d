"""The committed zoo is portable: regenerating it with torch's plainest kernels on one
thread, or with two threads for torch and BLAS, gives every committed byte.

Each run is a fresh ``python -m generator zoo --out DIR`` process, since the kernel
choice (``ATEN_CPU_CAPABILITY``) and the thread pools are fixed when a process starts.
The determinism comes from the construction (float64 references, seeded float64
weights); nothing here touches OPENBLAS_CORETYPE or OPENBLAS_L2_SIZE.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from generator.bench import ROOT
from generator.zoo import ZOO

THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
SETTINGS = {
    "default_kernels_1_thread": {"ATEN_CPU_CAPABILITY": "default", **dict.fromkeys(THREAD_VARIABLES, "1")},
    "best_kernels_2_threads": dict.fromkeys(THREAD_VARIABLES, "2"),
}


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


def test_zoo_regenerates_byte_identical_with_other_kernels_and_threads(tmp_path: Path) -> None:
    runs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "generator", "zoo", "--out", str(tmp_path / name)],
            cwd=ROOT,
            env=_environment(settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, settings in SETTINGS.items()
    }  # both at once: the test takes as long as one run
    errors = {name: run.communicate(timeout=600)[1] for name, run in runs.items()}
    committed = _files(ZOO)
    for name, run in runs.items():
        assert run.returncode == 0, f"{name}: {errors[name][-2000:]}"
        diff = _differences(committed, _files(tmp_path / name))
        assert not diff, f"{name} ({SETTINGS[name]}): {len(diff)} files differ from zoo/: {diff[:20]}"
