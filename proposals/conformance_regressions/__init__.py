"""Conformance regressions: a proposal of the ONNX GenAI working group."""
