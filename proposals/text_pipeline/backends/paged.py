"""The ``onnxruntime-paged`` backend: the decoder after the paged-attention rewrite, its
cache a pool of blocks on onnxruntime's CPU provider (``serving.PagedCache``).

``create_pipeline("onnxruntime-paged", folder)`` gives the WG ``Pipeline`` (the shared
``Generator`` over ``serving.PagedRunner``); ``create_server(folder)`` gives the serving
loop (``serving.PagedServer``: submit, step, collect) on the same kind of cache. The
device's ``num_blocks`` (default: room for eight sequences at the model's full context)
and ``block_size`` size the pool.
"""

from __future__ import annotations

from pathlib import Path

from generator.errors import UsageError
from proposals.text_pipeline.build import spec_from_model
from proposals.text_pipeline.factory import Device, register_backend
from proposals.text_pipeline.folder import ModelFolder
from proposals.text_pipeline.generation import RunnerEngine
from proposals.text_pipeline.pipeline import Pipeline
from proposals.text_pipeline.serving import DEFAULT_BLOCK_SIZE, PagedCache, PagedRunner, PagedServer
from proposals.text_pipeline.tokenizer import load_tokenizer

NAME = "onnxruntime-paged"
DEFAULT_SEQUENCES = 8  # the default pool holds this many sequences at full context


def _cache(folder: ModelFolder, num_blocks: object, block_size: object) -> PagedCache:
    for name, value in (("num_blocks", num_blocks), ("block_size", block_size)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise UsageError(f"{name} must be a positive integer, got {value!r}")
    size = block_size or DEFAULT_BLOCK_SIZE
    context = spec_from_model(folder.decoder).max_positions
    blocks = num_blocks or DEFAULT_SEQUENCES * -(-context // size)
    return PagedCache(folder.decoder, blocks, size, external_data=folder.external_data)


def create(model_dir: Path, device: Device) -> Pipeline:
    folder = ModelFolder.read(model_dir)
    cache = _cache(folder, device.config.get("num_blocks"), device.config.get("block_size"))
    return Pipeline(RunnerEngine(PagedRunner(cache)), load_tokenizer(folder.tokenizer_json), folder.config)


def create_server(
    model_dir: str | Path, *, num_blocks: int | None = None, block_size: int | None = None
) -> PagedServer:
    """The serving loop on a model folder's decoder (stop strings decoded by its tokenizer)."""
    folder = ModelFolder.read(Path(model_dir))
    tokenizer = load_tokenizer(folder.tokenizer_json)
    return PagedServer(
        _cache(folder, num_blocks, block_size),
        decode=lambda ids: tokenizer.decode(list(ids), skip_special_tokens=True),
    )


def devices() -> list[Device]:
    return [Device("CPU", {"provider": "CPUExecutionProvider", "num_blocks": None, "block_size": DEFAULT_BLOCK_SIZE})]


register_backend(NAME, create, devices)
