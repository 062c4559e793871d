"""Export a trained checkpoint (a GGUF file or a transformers folder) into a pipeline model
folder: ``model.onnx`` (the one decoder builder's graph, weights in ``model.onnx.data``
beside it), the checkpoint's own ``tokenizer.json`` and chat template, and a
``pipeline.json`` that records the source (file name, sha256, architecture), the special
token ids and the generation defaults.

The checkpoint is checked before anything slow runs: a GGUF file's header and tensor table
are read with the ``gguf`` package (a truncated file, another format, a vision projector or
an unsupported architecture are refused in one line); a transformers folder needs its
``config.json``. transformers then loads it in float32 (GGUF weights dequantized) and
``build_decoder`` converts it. The same checkpoint exported twice gives the same bytes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import onnx

from generator.errors import UsageError
from proposals.text_pipeline.build import SUPPORTED_MODEL_TYPES, build_decoder, decoder_spec
from proposals.text_pipeline.checkpoints import (
    CHECKPOINTS,
    EXPORT_DIR,
    Progress,
    checkpoint,
    checkpoint_file,
    file_sha256,
    stderr_progress,
)
from proposals.text_pipeline.config import GenerationConfig
from proposals.text_pipeline.folder import FORMAT, PIPELINE_FILE, config_to_json

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
TOKENIZER_FILE = "tokenizer.json"
TEMPLATE_FILE = "chat_template.jinja"
EXPORT_FILES = (MODEL_FILE, DATA_FILE, TOKENIZER_FILE, TEMPLATE_FILE, PIPELINE_FILE)
DEFAULT_MAX_NEW_TOKENS = 128
# GGUF ``general.architecture`` -> transformers model_type, for the architectures both
# transformers' GGUF loader and build_decoder support
GGUF_ARCHITECTURES = {
    "llama": "llama",
    "mistral": "mistral",
    "qwen2": "qwen2",
    "qwen3": "qwen3",
    "phi3": "phi3",
    "gemma2": "gemma2",
    "gemma3": "gemma3_text",
}
VISION_GGUF_ARCHITECTURES = ("clip", "mllama")  # multimodal projectors (mmproj files)
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class Source:
    """What ``pipeline.json`` records about the checkpoint an export came from."""

    kind: str  # "gguf" or "transformers"
    file: str  # the GGUF file's name, or the folder's
    sha256: str  # of the GGUF file; for a folder, of its config.json and weight files' hashes
    architecture: str  # transformers model_type
    model: str | None = None  # the named checkpoint (checkpoints.CHECKPOINTS), when it is one
    path: str | None = None  # where another checkpoint was read (absolute), for the transformers backend

    def to_json(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: object, where: str) -> Source:
        try:
            source = cls(**data)
        except TypeError:
            source = None
        if source is None or not all(isinstance(getattr(source, k), str) for k in ("kind", "file", "sha256")):
            raise UsageError(f"{where}: bad 'source'; expected kind, file, sha256, architecture (as export writes)")
        return source


def _supported_gguf() -> str:
    return ", ".join(GGUF_ARCHITECTURES)


# --8<-- [start:check_gguf]
def gguf_architecture(path: Path) -> str:
    """The transformers model_type of a GGUF checkpoint, read from its header and checked
    whole (every tensor's data inside the file) before transformers loads it."""
    from gguf import GGUFReader

    if not path.is_file():
        raise UsageError(f"{path}: no such file; --gguf takes a .gguf checkpoint file")
    with path.open("rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise UsageError(
                f"{path}: not a GGUF file (it does not start with 'GGUF'); --gguf takes a .gguf checkpoint"
            )
    try:
        reader = GGUFReader(path)
        size = path.stat().st_size
        end = max((t.data_offset + int(t.n_bytes) for t in reader.tensors), default=0)
    except (ValueError, IndexError, KeyError, OSError) as err:
        raise UsageError(f"{path}: truncated or corrupt GGUF file ({str(err).splitlines()[0][:120]})") from None
    if end > size:
        raise UsageError(f"{path}: truncated GGUF file ({size} bytes; its tensors need {end})")
    field = reader.fields.get("general.architecture")
    arch = field.contents() if field is not None else None
    if arch in VISION_GGUF_ARCHITECTURES:
        raise UsageError(
            f"{path}: a vision checkpoint (GGUF architecture {arch!r}); supported: text decoders ({_supported_gguf()})"
        )
    if arch not in GGUF_ARCHITECTURES:
        raise UsageError(f"{path}: unsupported architecture {arch!r}; supported: {_supported_gguf()}")
    return GGUF_ARCHITECTURES[arch]


# --8<-- [end:check_gguf]


def hf_config(folder: Path):
    """A transformers folder's config, checked to be a supported text decoder."""
    from transformers import AutoConfig

    if not (folder / "config.json").is_file():
        raise UsageError(
            f"{folder}: no config.json; --hf takes a transformers checkpoint folder (config.json + weights)"
        )
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (ValueError, OSError, KeyError) as err:
        raise UsageError(
            f"{folder}/config.json: not a transformers config ({str(err).splitlines()[0][:120]})"
        ) from None
    if getattr(config, "vision_config", None) is not None:
        raise UsageError(
            f"{folder}: a vision checkpoint ({config.model_type!r} has a vision tower); "
            f"supported: text decoders ({', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    decoder_spec(config)  # names an unsupported architecture or feature
    return config


def folder_sha256(folder: Path) -> str:
    """One sha256 for a transformers folder: of ``config.json`` and each weight file's hash."""
    import hashlib

    names = ["config.json", *sorted(p.name for p in folder.glob("*.safetensors"))]
    lines = "".join(f"{file_sha256(folder / n)}  {n}\n" for n in names)
    return hashlib.sha256(lines.encode()).hexdigest()


def named_model(sha256: str) -> str | None:
    return next((c.name for c in CHECKPOINTS.values() if c.sha256 == sha256), None)


def gguf_source(path: Path) -> Source:
    arch = gguf_architecture(path)
    sha = file_sha256(path)
    name = named_model(sha)
    return Source("gguf", path.name, sha, arch, name, None if name else str(path.resolve()))


def hf_source(folder: Path) -> Source:
    config = hf_config(folder)
    return Source(
        "transformers", folder.resolve().name, folder_sha256(folder), config.model_type, None, str(folder.resolve())
    )


# --8<-- [start:source_checkpoint]
def source_checkpoint(source: Source, where: str) -> Path:
    """The checkpoint an export came from, found again (a named model through its package,
    another by the path recorded) and checked against the sha256 ``pipeline.json`` records."""

    if source.model is not None:
        path = checkpoint_file(source.model)  # checks the package's file against its own sha256
    elif source.path is not None and Path(source.path).exists():
        path = Path(source.path)
    else:
        raise UsageError(
            f"{where}: the source checkpoint {source.file} is not at {source.path}; export the folder again"
        )
    actual = file_sha256(path) if source.kind == "gguf" else folder_sha256(path)
    if actual != source.sha256:
        raise UsageError(
            f"{path}: sha256 {actual} does not match the {source.sha256} that {where} records; "
            "these are not the folder's weights (export the folder again)"
        )
    return path


# --8<-- [end:source_checkpoint]


def load_checkpoint(path: Path, source: Source):
    """The checkpoint in float32 and its tokenizer, through transformers (offline)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, extra = (path.parent, {"gguf_file": path.name}) if source.kind == "gguf" else (path, {})
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, **extra)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, local_files_only=True, **extra)
    if model.config.model_type != source.architecture:
        raise UsageError(f"{path}: transformers loaded a {model.config.model_type!r}; expected {source.architecture!r}")
    return model.eval(), tokenizer


def check_out(out: Path) -> None:
    """``--out`` must be absent, empty, or a previous export (whose files are replaced)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: a file; give a new or empty folder, or a previous export")
    if out.is_dir() and any(out.iterdir()) and exported_sha256(out) is None:
        raise UsageError(
            f"--out {out}: a non-empty folder that holds no export; give a new or empty folder, or a previous export"
        )


def exported_sha256(folder: Path) -> str | None:
    """The source sha256 an export folder's ``pipeline.json`` records (None: not an export)."""
    try:
        manifest = json.loads((folder / PIPELINE_FILE).read_text(encoding="utf-8"))
        sha = manifest["source"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return sha if isinstance(sha, str) and (folder / MODEL_FILE).is_file() else None


def special_tokens(tokenizer, model) -> dict:
    """BOS/EOS/pad ids (None where the checkpoint has none) and whether encoding adds BOS."""
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    probe = tokenizer.backend_tokenizer.encode("a").ids
    ids["adds_bos_token"] = bool(probe) and probe[0] == tokenizer.bos_token_id
    return ids


def generation_defaults(tokenizer, model) -> GenerationConfig:
    """Greedy decoding to the checkpoint's EOS ids (its generation config's and the tokenizer's)."""
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if tokenizer.eos_token_id is not None:
        eos.add(tokenizer.eos_token_id)
    return GenerationConfig(max_new_tokens=DEFAULT_MAX_NEW_TOKENS, eos_token_ids=frozenset(eos))


def manifest(source: Source, tokenizer, model, has_template: bool) -> dict:
    data = {
        "format": FORMAT,
        "decoder": MODEL_FILE,
        "tokenizer": TOKENIZER_FILE,
        "generation_config": config_to_json(generation_defaults(tokenizer, model)),
        "special_tokens": special_tokens(tokenizer, model),
        "source": source.to_json(),
    }
    if has_template:
        data["chat_template"] = TEMPLATE_FILE
    return data


class _Steps:
    """Progress: each long step's name, then its time."""

    def __init__(self, progress: Progress) -> None:
        self.progress, self.start = progress, None

    def __call__(self, message: str) -> None:
        self.done()
        self.progress(f"{message} ...")
        self.start = time.perf_counter()

    def done(self) -> None:
        if self.start is not None:
            self.progress(f"  done in {time.perf_counter() - self.start:.1f} s")
            self.start = None


# --8<-- [start:export]
def export_checkpoint(
    *, gguf: Path | None = None, hf: Path | None = None, out: Path, progress: Progress = stderr_progress
) -> Path:
    """Export a GGUF file or a transformers folder into the pipeline folder ``out``."""
    if (gguf is None) == (hf is None):
        raise UsageError("give one checkpoint: --gguf FILE or --hf FOLDER")
    out = Path(out)
    check_out(out)
    source = gguf_source(Path(gguf)) if gguf is not None else hf_source(Path(hf))  # bad input: one line
    step = _Steps(progress)
    step(f"loading {source.file} with transformers (float32, {source.architecture})")
    model, tokenizer = load_checkpoint(Path(gguf if gguf is not None else hf), source)
    step("building the ONNX decoder")
    decoder = build_decoder(model)
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    files = {
        TOKENIZER_FILE: tokenizer.backend_tokenizer.to_str(pretty=True).encode("utf-8"),
        PIPELINE_FILE: (json.dumps(manifest(source, tokenizer, model, template is not None), indent=2) + "\n").encode(),
    }
    if template is not None:
        files[TEMPLATE_FILE] = template.encode("utf-8")
    del model
    step(f"writing {out}")
    out.mkdir(parents=True, exist_ok=True)
    for name in EXPORT_FILES:  # a previous export's files go first (a template it had and this lacks)
        (out / name).unlink(missing_ok=True)
    onnx.save_model(
        decoder,
        out / MODEL_FILE,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_FILE,
        size_threshold=1024,
    )
    for name, data in files.items():
        (out / name).write_bytes(data)
    step.done()
    return out


# --8<-- [end:export]


# --- The packaged checkpoints exported once, cached under build/exports/ ---


def export_dir(name: str) -> Path:
    """Where the named checkpoint's export is cached: keyed by the checkpoint's sha256."""
    ckpt = checkpoint(name)
    return EXPORT_DIR / f"{ckpt.name}-{ckpt.sha256[:16]}"


def exported_folder(name: str, progress: Progress = stderr_progress) -> Path:
    """The named checkpoint's pipeline model folder under ``build/exports/``, exported on first
    use. An existing folder is reused only when its ``pipeline.json`` records the
    checkpoint's sha256 (an interrupted export leaves no such folder: it is written beside
    it and renamed into place)."""
    ckpt = checkpoint(name)
    target = export_dir(name)
    if exported_sha256(target) == ckpt.sha256:
        return target
    EXPORT_DIR.mkdir(parents=True, exist_ok=True)
    with _locked(EXPORT_DIR / f".{name}.lock"):  # parallel test workers export once
        if exported_sha256(target) == ckpt.sha256:
            return target
        return _export(name, target, progress)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _export(name: str, target: Path, progress: Progress) -> Path:
    ckpt = checkpoint(name)
    gguf = checkpoint_file(name, progress)
    scratch = target.with_name(f".{target.name}.{os.getpid()}.partial")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        export_checkpoint(gguf=gguf, out=scratch, progress=progress)
        if target.exists():  # a stale export (another sha256 or unfinished): replaced
            shutil.rmtree(target)
        os.replace(scratch, target)
    except OSError:
        if exported_sha256(target) != ckpt.sha256:  # not a concurrent export finishing first
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
