"""Reference semantics of the Linear attention proposal, in numpy, written from the spec text."""

from __future__ import annotations

import numpy as np


# --8<-- [start:semantics]
def leaky_identity(x: np.ndarray, *, alpha: float = 1.0) -> np.ndarray:
    """Y = alpha * X where X > 0, else X (a leaky identity; replace with the real semantics)."""
    return np.where(x > 0, alpha * x, x).astype(x.dtype)


# --8<-- [end:semantics]
