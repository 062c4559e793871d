"""The built-in backends, each in its own module, each registering itself with
``proposals.text_pipeline.factory`` when imported. The factory finds them by the project's one
plug-in rule (pyproject.toml's ``[tool.onnx-genai-proposals] pipeline-backends``), so this
package imports none of them."""
