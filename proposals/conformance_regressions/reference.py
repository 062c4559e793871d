"""Where the regression cases' expected outputs and reasons come from.

The expected outputs are the float64 spec references of :mod:`conformance.reference`
(written from the onnx 1.23.2 schema text), computed by the repro builders of
:mod:`conformance.repros`; the reasons are the divergence table's
(:mod:`conformance.divergences`), or the repro's title for divergences outside the fuzzed ops.
"""

from __future__ import annotations

from conformance.divergences import TABLE
from conformance.repros import ALL, Repro


# --8<-- [start:semantics]
def repro(slug: str) -> Repro:
    """The repro folder ``repros/<slug>/``'s definition: its model, inputs and expected outputs."""
    return next(r for r in ALL if r.slug == slug)


def reason(slug: str) -> str:
    """The one-line reason a runtime disagrees, as the divergence table (or the repro) states it."""
    row = next((row for row in TABLE if row.slug == slug), None)
    return row.reason if row else repro(slug).title


# --8<-- [end:semantics]
