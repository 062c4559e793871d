"""The built-in backends, each in its own module, each registering itself with
``proposals.text_pipeline.factory`` when imported (the package imports them all)."""

from proposals.text_pipeline.backends import onnxruntime, onnxruntime_genai, openvino_genai, paged, transformers

__all__ = ["onnxruntime", "onnxruntime_genai", "openvino_genai", "paged", "transformers"]
