"""Compatibility lowering (filled in below)."""

from __future__ import annotations

from collections.abc import Sequence

from generator.runtimes import Runtime


def lowered_variants(base: Sequence[Runtime]) -> list[Runtime]:
    return []
