"""Topic-agnostic spine of onnx-genai-proposals: cases, zoo, verifier, runtimes, docs."""

from generator import telemetry
from generator.errors import UsageError
from generator.registry import Case, DataSet, case

telemetry.disable()  # before any engine is imported: nothing is written to $HOME

__all__ = ["Case", "DataSet", "UsageError", "case"]
