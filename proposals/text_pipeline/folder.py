"""The files of a pipeline model folder (decoder, tokenizer, pipeline config) as bytes,
and the transformers reference values the zoo cases expect."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from generator.torch_reference import float64_mode
from generator.zoo import case_dir
from proposals.text_pipeline.build import build_decoder
from proposals.text_pipeline.config import GenerationConfig
from proposals.text_pipeline.models import tiny_model
from proposals.text_pipeline.pipeline import pipeline_manifest
from proposals.text_pipeline.tokenizer import EOS_TOKEN, load_tokenizer, tokenizer_json

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
