"""Every repro folder is what conformance.repros writes, and its script still shows its difference."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from conformance import repros

# Fixed in the pinned version (the script then says FIXED), or only shown on some CPUs.
FIXED_HERE = {"onnx-tensorscatter-circular-batch-wrap": "fixed by onnx#8353 in onnx 1.23"}
CPU_DEPENDENT = {"openvino-bf16-default-precision": "needs a CPU with bf16"}


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
    folder = repros.REPROS / repro.slug
    assert len((folder / "repro.py").read_text().splitlines()) <= 20
    done = subprocess.run([sys.executable, "repro.py"], cwd=folder, capture_output=True, text=True, timeout=120)
    verdict = done.stdout.strip().splitlines()[-1]
    assert verdict.startswith(("REPRODUCED", "FIXED")), done.stdout + done.stderr
    if repro.slug in FIXED_HERE:
        assert done.returncode == 0 and verdict.startswith("FIXED"), "reproduces again: " + verdict
    elif repro.slug not in CPU_DEPENDENT:
        assert done.returncode == 1 and verdict.startswith("REPRODUCED"), (
            f"{repro.slug} no longer reproduces: fixed upstream? remove its divergence row. {verdict}"
        )


@pytest.mark.parametrize(
    "repro", [r for r in repros.ALL if r.slug not in FIXED_HERE | CPU_DEPENDENT], ids=lambda r: r.slug
)
def test_expected_and_actual_really_differ(repro) -> None:
    _, inputs, expected = repro.build()
    actual = repro.actual(inputs)
    if isinstance(actual, str):
        return
    assert any(not np.allclose(actual[n], expected[n], rtol=repro.rtol, atol=repro.atol) for n in expected)
