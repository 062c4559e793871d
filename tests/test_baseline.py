"""Strict conformance baselines: every change of a cell's status fails until it is recorded on
purpose, in either direction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from generator import Case, UsageError, baseline, zoo
from generator.cli import main
from generator.runtimes import ReferenceRuntime, Runtime
from generator.verify import failures, verify

from .test_spine import _add_case, _spec


class _Switchable(Runtime):
    """The reference evaluator, or a runtime that refuses the model, or one that adds one."""

    name = "switchable"
    mode = "pass"

    def version(self) -> str:
        return "1"

    def load(self, model_path: Path):
        if self.mode == "unsupported":
            raise RuntimeError("No kernel for Mul")
        inner = ReferenceRuntime().load(model_path)
        if self.mode == "mismatch":
            return lambda inputs: {k: v + 1 for k, v in inner(inputs).items()}
        return inner


def _recorded(zoo_dir: Path, runtime: Runtime, base: dict | None = None) -> dict:
    data, _ = baseline.recorded(verify([runtime], zoo=zoo_dir), base or baseline.empty(), full=True)
    return data


def _changes(zoo_dir: Path, runtime: Runtime, base: dict) -> list[str]:
    return failures(verify([runtime], zoo=zoo_dir), base, full=True)


def _diverging() -> Case:
    base = _add_case()
    return Case(base.model, base.datasets, divergences={"switchable": "adds one, on purpose"})


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    zoo.write([_spec()], tmp_path / "zoo", prune=True)
    return tmp_path / "zoo"


@pytest.mark.parametrize("now", ["unsupported", "mismatch"])
def test_a_passing_cell_that_changes_fails(tiny: Path, now: str) -> None:
    runtime = _Switchable()
    base = _recorded(tiny, runtime)
    assert base["runtimes"]["switchable"]["cells"] == {"spine/affine": {"status": "pass"}}
    runtime.mode = now
    [line] = _changes(tiny, runtime, base)
    assert line.startswith(f"spine/affine on switchable: baseline pass, now {now}")
    assert line.endswith("if intended, record it: python -m generator verify --record spine/affine")


def test_an_unsupported_cell_that_starts_passing_fails(tiny: Path) -> None:
    runtime = _Switchable()
    runtime.mode = "unsupported"
    base = _recorded(tiny, runtime)
    assert base["runtimes"]["switchable"]["cells"]["spine/affine"] == {
        "status": "unsupported",
        "reason": "RuntimeError: No kernel for Mul",
    }
    runtime.mode = "pass"
    [line] = _changes(tiny, runtime, base)
    assert "baseline unsupported (RuntimeError: No kernel for Mul), now pass" in line


def test_a_divergence_that_goes_away_fails(tmp_path: Path) -> None:
    zoo.write([_spec(_diverging)], tmp_path, prune=True)
    runtime = _Switchable()
    runtime.mode = "mismatch"
    base = _recorded(tmp_path, runtime)
    assert base["runtimes"]["switchable"]["cells"]["spine/affine"] == {
        "status": "mismatch",
        "reason": "adds one, on purpose",
    }
    assert _changes(tmp_path, runtime, base) == []
    runtime.mode = "pass"
    [line] = _changes(tmp_path, runtime, base)
    assert "baseline mismatch (adds one, on purpose), now pass" in line
    with pytest.raises(UsageError, match="still records a divergence for it"):
        _recorded(tmp_path, runtime, base)


def test_a_new_cell_has_no_baseline_and_fails(tiny: Path) -> None:
    runtime = _Switchable()
    base = _recorded(tiny, runtime)
    zoo.write([_spec(name="other")], tiny, prune=False)
    [line] = _changes(tiny, runtime, base)
    assert line.startswith("spine/other on switchable: new cell, pass, has no baseline")


def test_a_removed_case_is_stale_in_the_baseline(tiny: Path) -> None:
    runtime = _Switchable()
    base = _recorded(tiny, runtime)
    zoo.write([_spec(name="other")], tiny, prune=True)
    base["runtimes"]["switchable"]["cells"]["spine/other"] = {"status": "pass"}
    assert _changes(tiny, runtime, base) == [
        "spine/affine on switchable: in the baseline but no longer in the zoo; "
        "record to drop it: python -m generator verify --record"
    ]


def test_a_mismatch_without_a_reason_cannot_be_recorded(tiny: Path) -> None:
    runtime = _Switchable()
    runtime.mode = "mismatch"
    with pytest.raises(UsageError, match=r"is a mismatch with no reason: add divergences=\{'switchable'"):
        _recorded(tiny, runtime)


def test_cli_exits_1_naming_the_cell_and_the_command(run_main, tiny: Path, tmp_path: Path) -> None:
    path = tmp_path / "baseline.json"
    stale = {"status": "unsupported", "reason": "was refused"}
    baseline.save({"format": 1, "runtimes": {"reference": {"version": "0", "cells": {"spine/affine": stale}}}}, path)
    args = ["verify", "--zoo", str(tiny), "--json", str(tmp_path / "m.json"), "--baseline", str(path)]
    result = run_main(main, *args)
    assert result.returncode == 1
    assert "spine/affine on reference: baseline unsupported (was refused), now pass" in result.stdout
    assert "python -m generator verify --record spine/affine" in result.stdout
    recorded = run_main(main, *args, "--record")
    assert recorded.returncode == 0, recorded.stderr
    assert json.loads(path.read_text())["runtimes"]["reference"]["cells"]["spine/affine"] == {"status": "pass"}
    assert run_main(main, *args).returncode == 0


def test_committed_baseline_covers_every_case_and_runtime_of_the_matrix() -> None:
    from generator.runtimes import available

    data = baseline.load()
    cases = set(zoo.load_manifest()["cases"])
    names = [runtime.name for runtime in available()]
    assert {"tract", "iree", "tvm"} <= set(names), "the configured engines are columns of the matrix"
    for name in names:
        assert set(data["runtimes"][name]["cells"]) == cases, f"record {name}: {baseline.record_command()}"
