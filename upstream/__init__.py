"""What this project checks against the next onnx release (onnx-weekly), and the backend cases it
offers onnx: ``make upstream`` (see upstream/README.md)."""
