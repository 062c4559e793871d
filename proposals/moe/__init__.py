"""Mixture of Experts as a function op (see README.md).

``from_transformers(block)`` turns a transformers v5 MoE block into a model holding
one ``org.onnx.genai.proposals.MoE`` node.
"""

from proposals.moe.hf import from_transformers

__all__ = ["from_transformers"]
