"""The MoE page's generated Markdown: every marker names a function that returns it, and
the spec's example links point at catalogue anchors of real MoE cases."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

from generator.markdown import GENERATED
from generator.registry import select

README = Path(__file__).parents[1] / "README.md"


def test_markers_resolve() -> None:
    markers = GENERATED.findall(README.read_text())
    assert ("proposals.moe.docs", "spec_markdown") in markers
    for module, function in markers:
        text = getattr(importlib.import_module(module), function)()
        assert isinstance(text, str) and text.strip(), (module, function)


def test_spec_links_are_catalogue_anchors() -> None:
    from proposals.moe.docs import EXAMPLES, spec_markdown

    targets = re.findall(r"\]\(([^)]+)\)", spec_markdown())
    cases = {spec.name for spec in select(["moe"])}
    assert sorted(targets) == sorted(f"../../catalogue.md#moe-{name}" for name in EXAMPLES)
    assert set(EXAMPLES) <= cases


def test_bench_figures_come_from_the_json() -> None:
    from proposals.moe.docs import gather_per_slot_slowdown

    assert re.fullmatch(r"\d+–\d+× slower than `com.microsoft.MoE` at T = \d+", gather_per_slot_slowdown())
    assert not re.search(r"\d+(\.\d+)?× slower", GENERATED.sub("", README.read_text()))
