"""Issue 23's probes, one test each: concurrent and interrupted zoo writes heal, verify runs
plug-in cells under a timeout and a SystemExit guard, and inputs that used to give a traceback
with exit status 1 give one line with exit status 2. CLI tests run in process (``main``);
one subprocess test per contract checks the exit status of a real process."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from generator import UsageError, zoo
from generator.cli import main

from .test_spine import _spec

ROOT = Path(__file__).resolve().parent.parent


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    """``python -m generator ARGV`` in process: (exit status, stdout, stderr)."""
    try:
        status = main(list(argv))
    except SystemExit as stop:  # argparse's --help
        status = stop.code
    out, err = capsys.readouterr()
    return status, out, err


def _one_line(status: int, err: str, message: str, want: int = 2) -> None:
    assert status == want, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert message in err, err


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    out = tmp_path / "zoo"
    zoo.write([_spec()], out, prune=True)
    return out


# --- item 2: concurrent runs into one new folder --------------------------------------------


def test_a_second_run_into_a_new_folder_waits_for_the_first(tmp_path: Path) -> None:
    """The first run is between its first case file and its manifest when the second starts:
    the second used to see case files without a manifest and refuse the folder."""
    out, writing, go_on, errors = tmp_path / "new", threading.Event(), threading.Event(), []

    def first() -> None:
        zoo.write([_spec()], out, prune=False, progress=lambda spec, built: (writing.set(), go_on.wait(30)))

    def second() -> None:
        try:
            zoo.write([_spec(name="other")], out, prune=False)
        except UsageError as err:
            errors.append(err)

    one = threading.Thread(target=first)
    one.start()
    assert writing.wait(30)
    two = threading.Thread(target=second)
    two.start()
    time.sleep(0.3)
    go_on.set()
    one.join(30)
    two.join(30)
    assert errors == []
    assert sorted(json.loads((out / "manifest.json").read_text())["cases"]) == ["spine/affine", "spine/other"]


# --- item 3: interrupted writes heal --------------------------------------------------------


def test_zoo_removes_the_temporary_file_of_a_killed_write(tiny: Path) -> None:
    leftover = tiny / "spine" / "test_affine" / ".data.json.k2j_x9az.tmp"
    leftover.write_bytes(b"{")
    mine = tiny.parent / ".notes.abcdefgh.tmp"  # outside the zoo: not the writer's to remove
    mine.write_text("keep")
    with pytest.raises(UsageError, match="not in the manifest"):
        from generator.verify import verify

        verify([], (), tiny)
    zoo.write([_spec()], tiny, prune=True)
    assert not leftover.exists() and mine.exists()
    verify([], (), tiny)  # the zoo is whole again


def test_zoo_repairs_a_folder_a_killed_first_run_left(tmp_path: Path) -> None:
    out = tmp_path / "new"
    zoo.write([_spec()], out, prune=True)
    (out / "manifest.json").unlink()  # killed before the manifest was written
    (out / "spine" / "test_affine" / "data.json").unlink()
    zoo.write([_spec(), _spec(name="other")], out, prune=True)
    assert sorted(json.loads((out / "manifest.json").read_text())["cases"]) == ["spine/affine", "spine/other"]
    assert (out / "spine" / "test_affine" / "data.json").is_file()


@pytest.mark.parametrize("stray", ["notes.txt", "spine/readme.md", "spine/other_folder/x"])
def test_a_folder_with_anything_else_is_still_refused(tmp_path: Path, stray: str) -> None:
    out = tmp_path / "new"
    zoo.write([_spec()], out, prune=True)
    (out / "manifest.json").unlink()
    (out / stray).parent.mkdir(parents=True, exist_ok=True)
    (out / stray).write_text("mine")
    with pytest.raises(UsageError, match="holds no zoo"):
        zoo.write([_spec()], out, prune=True)
    assert (out / stray).read_text() == "mine"
