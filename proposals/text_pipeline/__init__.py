"""Text-to-text GenAI pipeline: the WG interface in Python, run end to end on an opset-24
decoder (TensorScatter-24 KV cache + Attention-24) with a real BPE tokenizer.

Backends are plug-ins (:mod:`proposals.text_pipeline.factory`): the built-in ones,
onnxruntime, transformers, onnxruntime-genai, openvino-genai and onnxruntime-paged, are
listed in pyproject.toml's ``[tool.onnx-genai-proposals] pipeline-backends``; an installed
package adds one through the ``onnx_genai_proposals.pipeline_backends`` entry points.
``backend_names()`` lists them."""

from proposals.text_pipeline.build import build_decoder
from proposals.text_pipeline.config import (
    BeamSearchConfig,
    GenerationConfig,
    GenerationInput,
    GenerationResult,
    SamplingConfig,
    StopCriteria,
)
from proposals.text_pipeline.factory import (
    Device,
    backend_names,
    create_pipeline,
    enumerate_devices,
    register_backend,
)
from proposals.text_pipeline.generation import Generator
from proposals.text_pipeline.pipeline import Pipeline

__all__ = [
    "BeamSearchConfig",
    "Device",
    "GenerationConfig",
    "GenerationInput",
    "GenerationResult",
    "Generator",
    "Pipeline",
    "SamplingConfig",
    "StopCriteria",
    "backend_names",
    "build_decoder",
    "create_pipeline",
    "enumerate_devices",
    "register_backend",
]
