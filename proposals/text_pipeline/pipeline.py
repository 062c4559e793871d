"""``Text2Text::Pipeline`` and the backend/device factories, in Python.

A model folder (a zoo case folder) holds ``model.onnx`` (the opset-24 decoder),
``tokenizer.json`` and ``pipeline.json`` (the default generation config and the
recipe of the transformers reference model). Backends are registered by name with a
device enumerator, like the WG's ``DeviceFactory`` / ``Text2TextPipelineFactory``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import onnx
from google.protobuf.message import DecodeError

from generator.errors import UsageError
from proposals.text_pipeline.build import decoder_spec, spec_from_model
from proposals.text_pipeline.config import (
    BeamSearchConfig,
    GenerationConfig,
    GenerationInput,
    GenerationResult,
    SamplingConfig,
    StopCriteria,
)
from proposals.text_pipeline.generator import Generator, beam_search
from proposals.text_pipeline.runners import OrtRunner, Runner, TorchRunner
from proposals.text_pipeline.tokenizer import load_tokenizer

PIPELINE_FILE = "pipeline.json"
FORMAT = "onnx-genai-proposals/text_pipeline/1"


# --8<-- [start:pipeline]
class Pipeline:
    """``Text2Text::Pipeline`` over a runner and a tokenizer.

    ``pipeline(GenerationInput)`` is ``operator()``; ``generate`` takes a batch;
    ``stream`` yields text pieces as tokens are generated.
    """

    def __init__(self, runner: Runner, tokenizer, config: GenerationConfig) -> None:
        self.runner, self.tokenizer = runner, tokenizer  # one runner (one session), reused
        self.set_generation_config(config)

    def get_generation_config(self) -> GenerationConfig:
        return self.config

    def set_generation_config(self, config: GenerationConfig) -> None:
        if not isinstance(config, GenerationConfig):
            raise UsageError(f"expected a GenerationConfig, got {type(config).__name__}")
        self.config = config

    def __call__(self, prompt: GenerationInput) -> GenerationResult:
        return self.generate([prompt])[0]

    def generate(self, prompts: Sequence[GenerationInput]) -> list[GenerationResult]:
        """Generate for a batch of prompts (beam search runs prompt by prompt)."""
        ids = [self.encode(p) for p in prompts]
        if not ids:
            raise UsageError("generate needs at least one GenerationInput")
        if self.config.beam_search_config.num_beams > 1:
            return [self._beam(prompt) for prompt in ids]
        gen = self.generator(ids)
        while not gen.is_done():
            gen.generate_next_token()
        return [self._result(s.new_tokens, s.finish_reason) for s in gen.seqs]

    def stream(self, prompt: GenerationInput) -> Iterator[str]:
        """Yield the new text as each token is generated (whole characters only)."""
        gen = self.generator([self.encode(prompt)])
        shown = ""
        while not gen.is_done():
            gen.generate_next_token()
            text = self._result(gen.seqs[0].new_tokens, gen.seqs[0].finish_reason).text
            # hold back a partial UTF-8 character, unless nothing more is coming
            if text != shown and (gen.is_done() or not text.endswith("\ufffd")):
                yield text[len(shown) :]
                shown = text

    def generator(self, prompts: Sequence[Sequence[int]]) -> Generator:
        """A fresh ``Text2Text::Generator`` with the prompts appended."""
        gen = Generator(self.runner, self.config, decode=self.decode, batch_size=len(prompts))
        gen.append_input_tokens(prompts)
        return gen

    # --8<-- [end:pipeline]

    def encode(self, prompt: GenerationInput) -> list[int]:
        if not isinstance(prompt, GenerationInput):
            raise UsageError(f"expected a GenerationInput, got {type(prompt).__name__}")
        ids = self.tokenizer.encode(prompt.text).ids
        if not ids:
            raise UsageError("the prompt is empty; give at least one character")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _result(self, tokens: Sequence[int], reason: str | None) -> GenerationResult:
        text = self.decode(tokens)
        if reason == "stop_string":
            text = _cut_after_stop(text, self.config.stop_strings)
        return GenerationResult(text, tuple(tokens), reason or "length", (text,))

    def _beam(self, prompt: list[int]) -> GenerationResult:
        hyps = beam_search(self.runner, prompt, self.config)
        texts = tuple(self.decode(h.tokens) for h in hyps)
        best = hyps[0].tokens
        reason = "eos" if len(best) and best[-1] in self.config.eos_token_ids else "length"
        return GenerationResult(texts[0], best, reason, texts)


def _cut_after_stop(text: str, stops: frozenset[str]) -> str:
    """The text up to and including the earliest stop string."""
    ends = [text.find(s) + len(s) for s in stops if s in text]
    return text[: min(ends)] if ends else text


# --------------------------------------------------------------------------- model folder
def config_to_json(config: GenerationConfig) -> dict:
    """A GenerationConfig as JSON (sets as sorted lists, the enum by name)."""
    s, b = config.sampling_config, config.beam_search_config
    return {
        "max_length": config.max_length,
        "max_new_tokens": config.max_new_tokens,
        "min_new_tokens": config.min_new_tokens,
        "eos_token_ids": sorted(config.eos_token_ids),
        "stop_strings": sorted(config.stop_strings),
        "sampling_config": dict(vars(s)),
        "beam_search_config": {**vars(b), "stop_criteria": b.stop_criteria.name},
    }


def config_from_json(data: Mapping) -> GenerationConfig:
    """The inverse of ``config_to_json``; unknown keys are an error."""
    try:
        data = dict(data)
        sampling = SamplingConfig(**data.pop("sampling_config", {}))
        beams = dict(data.pop("beam_search_config", {}))
        if "stop_criteria" in beams:
            beams["stop_criteria"] = StopCriteria[beams["stop_criteria"]]
        return GenerationConfig(sampling_config=sampling, beam_search_config=BeamSearchConfig(**beams), **data)
    except (TypeError, KeyError, ValueError) as err:
        raise UsageError(f"bad generation_config in {PIPELINE_FILE}: {err}") from None


@dataclass(frozen=True)
class ModelFolder:
    """The files of one pipeline model folder, read and checked."""

    path: Path
    decoder: onnx.ModelProto
    tokenizer_json: bytes
    config: GenerationConfig
    manifest: dict = field(repr=False)

    @classmethod
    def read(cls, path: str | Path) -> ModelFolder:
        """Read and check a folder; a missing or malformed file is a one-line UsageError."""
        path = Path(path)
        meta_path = path / PIPELINE_FILE
        if not meta_path.is_file():
            raise UsageError(
                f"{path} is not a text_pipeline model folder: no {PIPELINE_FILE} "
                "(run `python -m generator zoo text_pipeline` to write the zoo)"
            )
        _inside(path, PIPELINE_FILE, f"{meta_path}: the folder's own {PIPELINE_FILE}")
        manifest = _read_manifest(meta_path)
        decoder = _read_decoder(_named_file(path, manifest, "decoder"))
        tokenizer_path = _named_file(path, manifest, "tokenizer")
        tokenizer = _read_tokenizer(tokenizer_path, spec_from_model(decoder).vocab_size)
        return cls(path, decoder, tokenizer, config_from_json(manifest["generation_config"]), manifest)


def _named_file(folder: Path, manifest: dict, key: str) -> Path:
    """The file ``pipeline.json`` names under ``key``, which must lie inside the folder."""
    return _inside(folder, manifest[key], f"{folder / PIPELINE_FILE}: {key} {manifest[key]!r}")


def _inside(folder: Path, name: str, what: str) -> Path:
    """``folder / name``, refused unless it stays inside ``folder``: a model folder may only
    name its own files (no absolute path, no ``..``, no symlink that leads out)."""
    relative = PurePosixPath(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        raise UsageError(f"{what} must be a relative path inside the model folder (no '..', not absolute)")
    target = folder / relative
    if not target.resolve().is_relative_to(folder.resolve()):
        raise UsageError(f"{what} is a symlink that leads outside the model folder; only files inside it are read")
    return target


MANIFEST_KEYS = {"format": str, "decoder": str, "tokenizer": str, "generation_config": dict}


def _read_manifest(meta_path: Path) -> dict:
    """``pipeline.json`` parsed, with its format and required keys checked."""
    try:
        manifest = json.loads(meta_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{meta_path}: not UTF-8 text; expected a JSON object") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{meta_path}: invalid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    if not isinstance(manifest, dict):
        raise UsageError(f"{meta_path}: expected a JSON object, got {type(manifest).__name__}")
    if manifest.get("format") != FORMAT:
        raise UsageError(f"{meta_path}: format {manifest.get('format')!r}; expected {FORMAT!r}")
    for key, kind in MANIFEST_KEYS.items():
        if not isinstance(manifest.get(key), kind):
            raise UsageError(
                f"{meta_path}: {key!r} is missing or not a {kind.__name__}; required keys: {', '.join(MANIFEST_KEYS)}"
            )
    return manifest


def _read_decoder(model_path: Path) -> onnx.ModelProto:
    """The decoder ``pipeline.json`` names, parsed and recognised as a text_pipeline decoder."""
    if not model_path.is_file():
        raise UsageError(f"{model_path}: no such file ({PIPELINE_FILE} names it as the decoder)")
    try:
        model = onnx.load(model_path)
    except DecodeError:
        raise UsageError(f"{model_path}: not an ONNX model (protobuf parse failed)") from None
    except (onnx.checker.ValidationError, OSError) as err:
        # onnx itself refuses external data outside the model's folder (.., absolute, symlinks)
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"{model_path}: cannot read its external data ({reason})") from None
    try:
        spec_from_model(model)
    except UsageError as err:
        raise UsageError(f"{model_path}: {err}") from None
    return model


def _read_tokenizer(tokenizer_path: Path, vocab_size: int) -> bytes:
    """``tokenizer.json`` bytes, checked to load and to fit the decoder's vocabulary."""
    if not tokenizer_path.is_file():
        raise UsageError(f"{tokenizer_path}: no such file ({PIPELINE_FILE} names it as the tokenizer)")
    data = tokenizer_path.read_bytes()
    try:
        size = load_tokenizer(data).get_vocab_size()
    except Exception as err:  # tokenizers raises a bare Exception for any parse error
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UsageError(f"{tokenizer_path}: not a tokenizers tokenizer.json ({reason})") from None
    if size > vocab_size:
        raise UsageError(f"{tokenizer_path}: {size} tokens; the decoder's vocabulary has only {vocab_size}")
    return data


def pipeline_manifest(arch: str, config: GenerationConfig, hf_config: dict) -> dict:
    """The ``pipeline.json`` written beside a zoo decoder."""
    return {
        "format": FORMAT,
        "decoder": "model.onnx",
        "tokenizer": "tokenizer.json",
        "generation_config": config_to_json(config),
        "transformers": {
            "architecture": arch,
            "recipe": "proposals.text_pipeline.models.tiny_model",
            "config": hf_config,
        },
    }


# --------------------------------------------------------------------------- factories
@dataclass(frozen=True)
class Device:
    """``onnx::genai::Device``: an identifier and backend-specific settings."""

    identifier: str
    config: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Backend:
    name: str
    create: Callable[[Path, Device], Pipeline]
    enumerate: Callable[[], list[Device]]


_BACKENDS: dict[str, Backend] = {}


# --8<-- [start:factory]
def register_backend(
    name: str, create: Callable[[Path, Device], Pipeline], enumerate_: Callable[[], list[Device]]
) -> None:
    """``DeviceFactory::Register`` + ``Text2TextPipelineFactory::Register`` in one call."""
    _BACKENDS[name] = Backend(name, create, enumerate_)


def backend_names() -> list[str]:
    return sorted(_BACKENDS)


def enumerate_devices(backend: str) -> list[Device]:
    """``DeviceFactory::Enumerate``: the devices a backend can run on here."""
    return _backend(backend).enumerate()


def create_pipeline(backend: str, model_dir: str | Path, device: str | Device | None = None) -> Pipeline:
    """``Text2TextPipelineFactory::Create``: a pipeline for a model folder on a device
    (by identifier; the backend's first device when None)."""
    entry = _backend(backend)
    devices = entry.enumerate()
    if device is None:
        chosen = devices[0]
    else:
        wanted = device.identifier if isinstance(device, Device) else device
        matches = [d for d in devices if d.identifier == wanted]
        if not matches:
            valid = ", ".join(d.identifier for d in devices)
            raise UsageError(f"backend {backend!r} has no device {wanted!r}; valid: {valid}")
        chosen = matches[0]
    return entry.create(Path(model_dir), chosen)


# --8<-- [end:factory]


def _backend(name: str) -> Backend:
    if name not in _BACKENDS:
        raise UsageError(f"unknown backend {name!r}; valid: {', '.join(backend_names())}")
    return _BACKENDS[name]


def _onnxruntime(model_dir: Path, device: Device) -> Pipeline:
    folder = ModelFolder.read(model_dir)
    inplace = bool(device.config.get("inplace_cache", True))
    return Pipeline(
        OrtRunner(folder.decoder, inplace=inplace),
        load_tokenizer(folder.tokenizer_json),
        folder.config,
    )


def _transformers(model_dir: Path, device: Device) -> Pipeline:
    from proposals.text_pipeline.models import tiny_model

    folder = ModelFolder.read(model_dir)
    model = tiny_model(_recipe_architecture(folder))
    if decoder_spec(model.config) != spec_from_model(folder.decoder):
        raise UsageError(
            f"{model_dir}: the transformers recipe in {PIPELINE_FILE} does not "
            "describe model.onnx (shapes differ); rebuild the folder"
        )
    return Pipeline(TorchRunner(model), load_tokenizer(folder.tokenizer_json), folder.config)


def _recipe_architecture(folder: ModelFolder) -> str:
    """The architecture of the transformers recipe recorded in ``pipeline.json``."""
    recipe = folder.manifest.get("transformers")
    if not isinstance(recipe, dict) or not isinstance(recipe.get("architecture"), str):
        raise UsageError(
            f"{folder.path / PIPELINE_FILE}: no transformers.architecture; the transformers backend "
            "needs the recipe the zoo writes (use onnxruntime for other folders)"
        )
    return recipe["architecture"]


def _onnxruntime_genai(model_dir: Path, device: Device) -> Pipeline:
    from proposals.text_pipeline.ortgenai import OrtGenaiPipeline

    return OrtGenaiPipeline(ModelFolder.read(model_dir))


register_backend(
    "onnxruntime",
    _onnxruntime,
    lambda: [Device("CPU", {"provider": "CPUExecutionProvider", "inplace_cache": True})],
)
register_backend("transformers", _transformers, lambda: [Device("CPU", {"torch_device": "cpu"})])
register_backend("onnxruntime-genai", _onnxruntime_genai, lambda: [Device("CPU", {"provider": "cpu"})])
