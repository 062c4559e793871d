"""float64 references of the standard GenAI ops, written from the onnx 1.23.2 schema text.

Attention-23/24/25, TensorScatter-24 and RotaryEmbedding-23 are the kv_cache topic's
references and LinearAttention-27 the linear_attention topic's (one implementation each);
``attention`` here is kv_cache's ``attention_outputs``, every output of the node, which the
fuzzer compares.
"""

from __future__ import annotations

import numpy as np

from proposals.kv_cache.reference import AttentionResult, rotary_embedding, tensor_scatter
from proposals.kv_cache.reference import attention_outputs as attention  # every output: the fuzzer checks them all
from proposals.linear_attention.reference import RULES as LINEAR_ATTENTION_RULES
from proposals.linear_attention.reference import linear_attention

__all__ = [
    "LINEAR_ATTENTION_RULES",
    "AttentionResult",
    "attention",
    "linear_attention",
    "rms_normalization",
    "rotary_embedding",
    "swiglu",
    "tensor_scatter",
]


def rms_normalization(x: np.ndarray, scale: np.ndarray, *, axis: int = -1, epsilon: float = 1e-5) -> np.ndarray:
    """RMSNormalization-23: ``x / sqrt(mean(x^2 over axes [axis, rank)) + epsilon) * scale``."""
    axes = tuple(range(axis % x.ndim, x.ndim))
    x64 = x.astype(np.float64)
    rms = np.sqrt((x64 * x64).mean(axis=axes, keepdims=True) + epsilon)
    return (x64 / rms * scale.astype(np.float64)).astype(x.dtype)


def swiglu(a: np.ndarray, b: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """SwiGLU-28: ``Y = Swish_alpha(A) * B`` with ``Swish_alpha(a) = a * sigmoid(alpha * a)``."""
    a64 = a.astype(np.float64)
    return (a64 / (1.0 + np.exp(-alpha * a64)) * b.astype(np.float64)).astype(a.dtype)
