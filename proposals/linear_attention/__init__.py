"""Linear attention: a proposal of the ONNX GenAI working group."""
