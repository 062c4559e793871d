"""``verify``'s cell cache: a cell runs again whenever its runtime version, its adapter or
its case's bytes change, and only then."""

from __future__ import annotations

from pathlib import Path

import pytest

from generator import zoo
from generator.runtimes import ReferenceRuntime
from generator.verify import CellCache, verify

from .test_spine import _add_case, _spec


class _Counting(ReferenceRuntime):
    """The reference evaluator, counting the models it loads."""

    name = "counting"
    release = "1"

    def __init__(self) -> None:
        self.loads = 0

    def version(self) -> str:
        return self.release

    def load(self, model_path: Path):
        self.loads += 1
        return super().load(model_path)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    zoo.write([_spec()], tmp_path / "zoo", prune=True)
    return tmp_path / "zoo"


def test_an_unchanged_cell_is_read_not_run(tiny: Path, tmp_path: Path) -> None:
    runtime, cells = _Counting(), CellCache(tmp_path / "cache")
    first = verify([runtime], zoo=tiny, cache=cells)
    assert verify([runtime], zoo=tiny, cache=cells) == first
    assert runtime.loads == 1
    assert first["cases"]["spine/affine"]["results"]["counting"]["status"] == "pass"


def test_a_new_version_or_new_bytes_run_again(tiny: Path, tmp_path: Path) -> None:
    runtime, cells = _Counting(), CellCache(tmp_path / "cache")
    verify([runtime], zoo=tiny, cache=cells)
    runtime.release = "2"
    verify([runtime], zoo=tiny, cache=cells)
    assert runtime.loads == 2
    zoo.write([_spec(lambda: _add_case(scale=3.0))], tiny, prune=True)  # other model and data bytes
    matrix = verify([runtime], zoo=tiny, cache=cells)
    assert runtime.loads == 3
    # the case's expectation is x * 2 + bias whatever the scale: the new model's cell fails
    assert matrix["cases"]["spine/affine"]["results"]["counting"]["status"] == "mismatch"


def test_without_a_cache_every_cell_runs(tiny: Path) -> None:
    runtime = _Counting()
    verify([runtime], zoo=tiny)
    verify([runtime], zoo=tiny)
    assert runtime.loads == 2
