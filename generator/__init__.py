"""Topic-agnostic spine of onnx-genai-proposals: cases, zoo, verifier, runtimes, docs."""

from generator.errors import UsageError
from generator.registry import Case, DataSet, case

__all__ = ["Case", "DataSet", "UsageError", "case"]
