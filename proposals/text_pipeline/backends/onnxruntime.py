"""The onnxruntime backend: the opset-24 decoder on onnxruntime's CPU provider, its KV cache
updated in place through IOBinding (``runners.OrtRunner``), under the shared ``Generator``.
Device settings: ``kv_cache``, the cache format (``cache_formats``; float32 as built, or e.g. int8);
``moe``, how an MoE decoder's function op runs (``inline`` its body or ``substitute`` com.microsoft.MoE)."""

from __future__ import annotations

from pathlib import Path

from proposals.text_pipeline.cache_formats import FLOAT32, with_cache_format
from proposals.text_pipeline.factory import Device, register_backend
from proposals.text_pipeline.folder import ModelFolder
from proposals.text_pipeline.generation import RunnerEngine
from proposals.text_pipeline.moe_mlp import for_onnxruntime
from proposals.text_pipeline.pipeline import Pipeline
from proposals.text_pipeline.runners import OrtRunner
from proposals.text_pipeline.tokenizer import load_tokenizer

NAME = "onnxruntime"


def create(model_dir: Path, device: Device) -> Pipeline:
    folder = ModelFolder.read(model_dir)
    decoder = for_onnxruntime(folder.decoder, str(device.config.get("moe", "inline")))  # MoE decoders only
    decoder = with_cache_format(decoder, str(device.config.get("kv_cache", FLOAT32)))
    runner = OrtRunner(
        decoder, inplace=bool(device.config.get("inplace_cache", True)), external_data=folder.external_data
    )
    return Pipeline(RunnerEngine(runner), load_tokenizer(folder.tokenizer_json), folder.config)


def devices() -> list[Device]:
    return [
        Device(
            "CPU",
            {"provider": "CPUExecutionProvider", "inplace_cache": True, "kv_cache": FLOAT32, "moe": "inline"},
        )
    ]


register_backend(NAME, create, devices)
