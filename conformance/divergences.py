"""The divergence table: every known disagreement between a runtime and the spec reference.

Each row names the op, the runtimes it applies to, a predicate over the drawn example
(which feature triggers it), the reason, and the repro folder under ``repros/`` that
shows it upstream-ready. A mismatch that no row explains fails the fuzz run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from conformance.examples import Example


@dataclass(frozen=True)
class Divergence:
    slug: str  # repros/<slug>/
    op: str
    runtimes: tuple[str, ...]
    applies: Callable[[Example], bool]
    reason: str


TABLE: tuple[Divergence, ...] = ()


def find(example: Example, runtime_names: Sequence[str]) -> Divergence | None:
    """The first row that explains ``example`` on a runtime known by any of ``runtime_names``."""
    for row in TABLE:
        if row.op == example.op and set(row.runtimes) & set(runtime_names) and row.applies(example):
            return row
    return None
