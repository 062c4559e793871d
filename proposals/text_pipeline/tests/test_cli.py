"""``python -m proposals.text_pipeline`` streams, and bad arguments exit 2 in one line.

One test runs the command as a process (the exit status of a bad argument); streaming
and the other error tests call its ``main`` in this process."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from generator.bench import ROOT
from proposals.text_pipeline.__main__ import main
from proposals.text_pipeline.config import GenerationInput
from proposals.text_pipeline.factory import create_pipeline
from proposals.text_pipeline.folder import write_folder


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "proposals.text_pipeline", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


class FlushLog(io.StringIO):
    """A stdout that records what each flush hands on: what a reader of the pipe receives."""

    def __init__(self) -> None:
        super().__init__()
        self.pieces: list[str] = []

    def flush(self) -> None:
        sent = sum(map(len, self.pieces))
        if len(self.getvalue()) > sent:
            self.pieces.append(self.getvalue()[sent:])
        super().flush()


def test_streams_generated_text(tmp_path, monkeypatch):
    """Each piece is flushed as it is generated, and the pieces join to the pipeline's own
    (unstreamed) result. In process, so no machine load can merge the pieces (a reader's view
    of a pipe depends on when it is scheduled)."""
    folder = write_folder("llama", tmp_path / "llama")
    out = FlushLog()
    monkeypatch.setattr(sys, "stdout", out)
    assert main(["The KV cache", "--model-dir", str(folder), "--max-new-tokens", "48"]) == 0
    monkeypatch.undo()
    pipeline = create_pipeline("onnxruntime", folder)
    pipeline.set_generation_config(pipeline.get_generation_config().with_(max_new_tokens=48))
    expected = pipeline(GenerationInput("The KV cache")).text
    assert "".join(out.pieces) == expected + "\n"
    # 48 tokens give about 30 pieces; written at the end, the text would be one or two flushes
    assert len(out.pieces) >= 10, f"{len(out.pieces)} flush(es): not streamed"


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
def test_bad_arguments_exit_2_with_one_line(run_main, args, message):
    done = run_main(main, *args)
    assert done.returncode == 2
    assert message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


def _edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "pipeline.json").read_text())
    change(manifest)
    (folder / "pipeline.json").write_text(json.dumps(manifest))


def _set_metadata(folder: Path, key: str, value: str) -> None:
    model = onnx.load(folder / "model.onnx")
    next(p for p in model.metadata_props if p.key == key).value = value
    onnx.save(model, folder / "model.onnx")


def _elsewhere(folder: Path, name: str) -> Path:
    """Move a good file of the folder out of it (beside the folder), where it still works."""
    outside = folder.parent / "elsewhere"
    outside.mkdir(exist_ok=True)
    return Path(shutil.move(folder / name, outside / name))


def _name_decoder(folder: Path, name) -> None:
    moved = _elsewhere(folder, "model.onnx")
    _edit_manifest(folder, lambda m: m.update(decoder=name(moved)))


def _symlink_out(folder: Path, name: str) -> None:
    (folder / name).symlink_to(_elsewhere(folder, name))


def _subfolder_symlink_out(folder: Path) -> None:
    (folder / "weights").symlink_to(_elsewhere(folder, "model.onnx").parent, target_is_directory=True)
    _edit_manifest(folder, lambda m: m.update(decoder="weights/model.onnx"))


def _external_data_outside(folder: Path) -> None:
    """model.onnx keeps its weights in a file beside the folder, named by ``../``."""
    model = onnx.load(folder / "model.onnx")
    onnx.save(model, folder / "model.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    _elsewhere(folder, "weights.bin")
    model = onnx.load(folder / "model.onnx", load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../elsewhere/weights.bin"
    onnx.save(model, folder / "model.onnx")


# Each damages a copy of a good folder: (damage, backend, what stderr must name).
BROKEN_FOLDERS = {
    "invalid_json": (lambda f: (f / "pipeline.json").write_text("{bad"), "onnxruntime", "pipeline.json: invalid JSON"),
    "no_decoder_key": (
        lambda f: _edit_manifest(f, lambda m: m.pop("decoder")),
        "onnxruntime",
        "pipeline.json: 'decoder' is missing or not a str; required keys: format, decoder",
    ),
    "bad_generation_config": (
        lambda f: _edit_manifest(f, lambda m: m["generation_config"].update(max_tokens=3)),
        "onnxruntime",
        "bad generation_config in pipeline.json",
    ),
    "missing_model": (lambda f: (f / "model.onnx").unlink(), "onnxruntime", "model.onnx: no such file"),
    "corrupt_model": (
        lambda f: (f / "model.onnx").write_bytes(b"not a model"),
        "onnxruntime",
        "model.onnx: not an ONNX model",
    ),
    "empty_model": (
        lambda f: (f / "model.onnx").write_bytes(b""),
        "onnxruntime",
        "model.onnx: not a text_pipeline decoder",
    ),
    "corrupt_tokenizer": (
        lambda f: (f / "tokenizer.json").write_text("{not json"),
        "onnxruntime",
        "tokenizer.json: not a tokenizers tokenizer.json",
    ),
    "no_recipe": (
        lambda f: _edit_manifest(f, lambda m: m.pop("transformers")),
        "transformers",
        "no transformers.architecture",
    ),
    "vocab_size_not_an_integer": (
        lambda f: _set_metadata(f, "vocab_size", "abc"),
        "onnxruntime",
        "decoder metadata vocab_size='abc'; expected a positive integer",
    ),
    "sliding_window_negative": (
        lambda f: _set_metadata(f, "sliding_window", "-4"),
        "onnxruntime",
        "decoder metadata sliding_window='-4'; expected a positive integer",
    ),
    "unknown_model_type": (
        lambda f: _set_metadata(f, "model_type", "gpt2"),
        "onnxruntime",
        "decoder metadata model_type='gpt2'; supported: llama",
    ),
    # a folder may only name files inside itself, however it is spelled
    "decoder_named_by_dotdot": (
        lambda f: _name_decoder(f, lambda moved: "../elsewhere/model.onnx"),
        "onnxruntime",
        "decoder '../elsewhere/model.onnx' must be a relative path inside the model folder",
    ),
    "decoder_named_by_absolute_path": (
        lambda f: _name_decoder(f, str),
        "onnxruntime",
        "must be a relative path inside the model folder (no '..', not absolute)",
    ),
    "tokenizer_named_by_absolute_path": (
        lambda f: _edit_manifest(f, lambda m: m.update(tokenizer=str(_elsewhere(f, "tokenizer.json")))),
        "onnxruntime",
        "must be a relative path inside the model folder (no '..', not absolute)",
    ),
    "tokenizer_symlink_out": (
        lambda f: _symlink_out(f, "tokenizer.json"),
        "onnxruntime",
        "tokenizer 'tokenizer.json' is a symlink that leads outside the model folder",
    ),
    "decoder_in_a_symlinked_subfolder": (
        _subfolder_symlink_out,
        "onnxruntime",
        "decoder 'weights/model.onnx' is a symlink that leads outside the model folder",
    ),
    "pipeline_json_symlink_out": (
        lambda f: _symlink_out(f, "pipeline.json"),
        "onnxruntime",
        "the folder's own pipeline.json is a symlink that leads outside the model folder",
    ),
    "external_data_outside": (
        _external_data_outside,
        "onnxruntime",
        "model.onnx: cannot read its external data",
    ),
}


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory) -> Path:
    return write_folder("llama", tmp_path_factory.mktemp("good") / "llama")


@pytest.mark.parametrize("broken", list(BROKEN_FOLDERS))
def test_malformed_model_folder_exits_2_with_one_line(run_main, good_folder, tmp_path, broken):
    damage, backend, message = BROKEN_FOLDERS[broken]
    folder = Path(shutil.copytree(good_folder, tmp_path / "model"))
    damage(folder)
    done = run_main(main, "x", "--backend", backend, "--model-dir", str(folder))
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_prompt_that_is_not_utf8_exits_2_with_one_line():
    """A prompt argument with bytes that are not UTF-8 (Python holds them as surrogates).
    A process, for the exit status ``python -m`` gives and the bytes the OS passes."""
    done = cli(os.fsdecode(b"bad \xff prompt"), "--max-new-tokens", "2")
    assert done.returncode == 2, done.stderr
    assert "the prompt is not valid UTF-8 text (bytes b'\\xff' at 4)" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
