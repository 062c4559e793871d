"""``python -m proposals.text_pipeline`` streams, and bad arguments exit 2 in one line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from generator.bench import ROOT


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "proposals.text_pipeline", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_streams_generated_text():
    done = cli("The KV cache", "--backend", "onnxruntime", "--max-new-tokens", "12")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip()) > 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["x", "--backend", "nope"], "unknown backend 'nope'"),
        (["x", "--top-p", "2"], "top_p must be in (0, 1]"),
        (["x", "--max-new-tokens", "zero"], "invalid int value"),
        (["x", "--arch", "gpt2"], "unknown --arch 'gpt2'"),
        ([], "required: prompt"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message):
    done = cli(*args)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr
