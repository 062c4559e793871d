"""Text-to-text GenAI pipeline: the WG interface in Python, run end to end on an opset-24
decoder (TensorScatter-24 KV cache + Attention-24) with a real BPE tokenizer."""

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
