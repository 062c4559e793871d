"""A pipeline model folder: ``model.onnx`` (the opset-24 decoder), ``tokenizer.json`` and
``pipeline.json`` (the default generation config and the recipe of the transformers
reference model), written as the zoo holds it and read back checked; and the transformers
reference values the zoo cases expect."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath

import numpy as np
import onnx
from google.protobuf.message import DecodeError

from generator.errors import UsageError
from generator.torch_reference import float64_mode
from generator.zoo import case_dir
from proposals.text_pipeline.build import build_decoder, spec_from_model
from proposals.text_pipeline.config import BeamSearchConfig, GenerationConfig, SamplingConfig, StopCriteria
from proposals.text_pipeline.families import tiny_model
from proposals.text_pipeline.tokenizer import BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, load_tokenizer, tokenizer_json

PIPELINE_FILE = "pipeline.json"
FORMAT = "onnx-genai-proposals/text_pipeline/1"


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
    # the folder, when model.onnx keeps its weights in an external data file there: the
    # decoder is then read without them, and runtimes read them from the file
    external_data: Path | None = None

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
        inside_folder(path, PIPELINE_FILE, f"{meta_path}: the folder's own {PIPELINE_FILE}")
        manifest = read_manifest(meta_path)
        decoder_path = _named_file(path, manifest, "decoder")
        decoder, external = _read_decoder(decoder_path)
        tokenizer_path = _named_file(path, manifest, "tokenizer")
        tokenizer = _read_tokenizer(tokenizer_path, spec_from_model(decoder).vocab_size)
        config = config_from_json(manifest["generation_config"])
        return cls(path, decoder, tokenizer, config, manifest, decoder_path.parent if external else None)


def special_tokens(folder: ModelFolder) -> dict[str, str]:
    """The BOS, EOS and pad tokens' text: an export's own (``special_tokens`` ids in
    ``pipeline.json``; pad falls back to EOS), or the project tokenizer's for a zoo folder."""
    ids = folder.manifest.get("special_tokens")
    if not isinstance(ids, dict):
        return {"bos": BOS_TOKEN, "eos": EOS_TOKEN, "pad": PAD_TOKEN}
    tokenizer = load_tokenizer(folder.tokenizer_json)
    text = {
        k: tokenizer.id_to_token(i) if isinstance(i := ids.get(f"{k}_token_id"), int) else None
        for k in ("bos", "eos", "pad")
    }
    if None in (text["bos"], text["eos"]):
        raise UsageError(
            f"{folder.path / PIPELINE_FILE}: special_tokens needs bos_token_id and eos_token_id of the tokenizer"
        )
    return {**text, "pad": text["pad"] or text["eos"]}


def _named_file(folder: Path, manifest: dict, key: str) -> Path:
    """The file ``pipeline.json`` names under ``key``, which must lie inside the folder."""
    return inside_folder(folder, manifest[key], f"{folder / PIPELINE_FILE}: {key} {manifest[key]!r}")


def inside_folder(folder: Path, name: str, what: str) -> Path:
    """``folder / name``, refused unless it stays inside ``folder``: a model folder may only
    name its own files (no absolute path, no ``..``, no symlink that leads out)."""
    relative = PurePosixPath(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        raise UsageError(f"{what} must be a relative path inside the model folder (no '..', not absolute)")
    if "\0" in name or any(len(part.encode("utf-8", "surrogateescape")) > 255 for part in relative.parts):
        raise UsageError(f"{what[:200]}…: a file name has at most 255 bytes and no NUL")
    target = folder / relative
    if not target.resolve().is_relative_to(folder.resolve()):
        raise UsageError(f"{what} is a symlink that leads outside the model folder; only files inside it are read")
    return target


MANIFEST_KEYS = {"format": str, "decoder": str, "tokenizer": str, "generation_config": dict}


def read_manifest(meta_path: Path) -> dict:
    """``pipeline.json`` parsed, with its format and required keys checked."""
    try:
        manifest = json.loads(meta_path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UsageError(f"{meta_path}: not UTF-8 text; expected a JSON object") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{meta_path}: invalid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except RecursionError:
        raise UsageError(f"{meta_path}: JSON nested too deeply to read; expected a flat JSON object") from None
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


def _read_decoder(model_path: Path) -> tuple[onnx.ModelProto, bool]:
    """The decoder ``pipeline.json`` names, parsed and recognised as a text_pipeline decoder,
    without its external data (checked to lie inside the folder, whole); and whether it has any."""
    if not model_path.is_file():
        raise UsageError(f"{model_path}: no such file ({PIPELINE_FILE} names it as the decoder)")
    try:
        model = onnx.load(model_path, load_external_data=False)
    except DecodeError:
        raise UsageError(f"{model_path}: not an ONNX model (protobuf parse failed)") from None
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    for tensor in external:
        _check_external_data(model_path, tensor)
    try:
        spec_from_model(model)
    except UsageError as err:
        raise UsageError(f"{model_path}: {err}") from None
    return model, bool(external)


def _check_external_data(model_path: Path, tensor: onnx.TensorProto) -> None:
    """An initializer's external data: a file inside the model's folder that holds its bytes."""
    info = {e.key: e.value for e in tensor.external_data}
    what = f"{model_path}: cannot read its external data (tensor {tensor.name!r}"
    try:
        data = inside_folder(model_path.parent, info.get("location", ""), f"{what}, location {info.get('location')!r})")
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else None
    except ValueError:
        raise UsageError(f"{what}: offset/length are not integers)") from None
    if not data.is_file():
        raise UsageError(f"{what}: no file {info['location']!r} in the folder)")
    length = data.stat().st_size - offset if length is None else length
    if length < 0 or offset < 0 or offset + length > data.stat().st_size:
        raise UsageError(f"{what}: bytes {offset}..{offset + length} lie outside {info['location']!r})")


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
            "recipe": "proposals.text_pipeline.families.tiny_model",
            "config": hf_config,
        },
    }


DEFAULT_CONFIG = GenerationConfig(max_new_tokens=32, eos_token_ids=frozenset({0}))


def case_name(arch: str) -> str:
    return f"{arch}_decoder"


@cache
def decoder_bytes(arch: str) -> bytes:
    return build_decoder(tiny_model(arch)).SerializeToString()


def extra_files(arch: str) -> dict[str, bytes]:
    """``tokenizer.json`` and ``pipeline.json``, written beside ``model.onnx``."""
    assert load_tokenizer().token_to_id(EOS_TOKEN) == 0
    config = tiny_model(arch).config.to_dict()
    manifest = pipeline_manifest(arch, DEFAULT_CONFIG, _plain(config))
    return {
        "tokenizer.json": tokenizer_json(),
        "pipeline.json": (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode(),
    }


def _plain(config: dict) -> dict:
    """A transformers config dict with only JSON-stable entries (no dtype objects)."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def write_folder(arch: str, target: Path) -> Path:
    """Write a complete model folder for ``arch`` (what the zoo holds) into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    (target / "model.onnx").write_bytes(decoder_bytes(arch))
    for name, data in extra_files(arch).items():
        (target / name).write_bytes(data)
    return target


def zoo_folder(arch: str) -> Path | None:
    """The zoo's folder for ``arch`` when ``make zoo`` has written it."""
    path = case_dir(f"text_pipeline/{case_name(arch)}")
    return path if (path / "pipeline.json").is_file() and (path / "model.onnx").is_file() else None


def hf_step(model, tokens: list[int], cache=None):
    """transformers forward of one sequence: logits ``[S, V]``, the new cache, and each
    layer's keys/values ``[kv_heads, len, head_dim]`` (after RoPE, as the ONNX cache holds)."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.tensor([tokens]), cache=cache, use_cache=True)
    layers = [(layer.keys[0].numpy(), layer.values[0].numpy()) for layer in out.cache.layers]
    return out.logits[0].numpy(), out.cache, layers


def reference_step(model64, tokens: list[int], cache=None):
    """:func:`hf_step` of a float64 copy of a model (``float64_copy``) in ``float64_mode``:
    float64 values for the zoo's expected outputs, which the caller casts once."""
    with float64_mode():
        return hf_step(model64, tokens, cache)


def cache_arrays(cache) -> dict[str, np.ndarray]:
    """Sample 0's transformers cache under the decoder's buffer names (copies: transformers
    updates its states in place): ``key_i``/``value_i`` ``[kv_heads, len, head_dim]`` of an
    attention layer, ``conv_i`` (the last K-1 conv inputs; transformers keeps K, the oldest of
    which is never read again) and ``state_i`` ``[H_v, d_k, d_v]`` of a recurrent one."""
    arrays = {}
    for i, layer in enumerate(cache.layers):
        if hasattr(layer, "recurrent_states"):
            arrays[f"conv_{i}"] = cache.get_conv_state(i, state_idx=0)[0, :, 1:].numpy().copy()
            arrays[f"state_{i}"] = cache.get_recurrent_state(i, state_idx=0)[0].numpy().copy()
        else:
            arrays[f"key_{i}"], arrays[f"value_{i}"] = (t[0].numpy().copy() for t in (layer.keys, layer.values))
    return arrays


def reference_states(model64, tokens: list[int], cache=None):
    """A float64 model's logits ``[S, V]`` for ``tokens``, its cache (updated in place by the
    next call) and :func:`cache_arrays` of it: a hybrid decoder's expected values."""
    import torch

    with float64_mode(), torch.no_grad():
        out = model64(input_ids=torch.tensor([tokens]), cache=cache, use_cache=True)
        return out.logits[0].numpy(), out.cache, cache_arrays(out.cache)
