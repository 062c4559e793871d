"""No benchmark figure is typed into a page or a blog post: every measured number comes from
committed JSON through a ``<!-- generated: module:function -->`` marker, so ``make bench``
cannot leave a page stale.

The scan reads the Markdown source of every proposal page, every site page and every post
and flags a number followed by a unit of time, a ratio, a share or a rate. It skips what is
not typed prose: fenced code (executed blocks print their numbers at build time), inline
code, HTML comments (the markers themselves), link targets, products of two numbers
(``8 × 128`` is a shape, not a ratio), and quotations in double quotes, which are figures
cited from another project's paper or post, never measured here.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest

from generator.markdown import code_lines

ROOT = Path(__file__).resolve().parent.parent

PAGES = sorted(
    [
        *ROOT.glob("proposals/*/*.md"),
        *ROOT.glob("docs/*.md"),
        *ROOT.glob("docs/blog/posts/*.md"),
    ]
)

NUMBER = r"\d[\d,]*(?:\.\d+)?"
FIGURE = re.compile(
    rf"(?<![\w.]){NUMBER}(?:\s*(?:–|-|to)\s*{NUMBER})?\s*(?:µs|us|ms|s|×|x|%|tok/s|tokens/s|GB/s)(?![\w/])"
    r"(?!\s*\d)"  # "8 × 128": a product (a shape), not a ratio
)
NOT_PROSE = [
    re.compile(r"<!--.*?-->", re.S),  # comments, the generated markers among them
    re.compile(r"(`+).+?\1"),  # inline code
    re.compile(r"\]\([^)]*\)"),  # link targets
    # quotations, within one paragraph: figures cited from a source
    re.compile(r'"[^"\n]*(?:\n(?!\s*\n)[^"\n]*)*"|“[^”\n]*(?:\n(?!\s*\n)[^”\n]*)*”'),
]


def _blank(match: re.Match) -> str:
    return re.sub(r"[^\n]", " ", match[0])  # keep the newlines, so line numbers hold


def prose(markdown: str) -> str:
    """The page with code blocks (as generator.markdown parses them), code spans, comments,
    link targets and quotations blanked out, line for line."""
    code = code_lines(markdown)
    text = "\n".join("" if number in code else line for number, line in enumerate(markdown.splitlines()))
    for pattern in NOT_PROSE:
        text = pattern.sub(_blank, text)
    return text


def typed_figures(markdown: str) -> list[str]:
    """``line N: figure`` for each benchmark-like figure typed into the prose."""
    text = prose(markdown)
    return [f"line {text.count(chr(10), 0, m.start()) + 1}: {m[0]}" for m in FIGURE.finditer(text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_figure_typed_outside_a_marker(page: Path) -> None:
    found = typed_figures(page.read_text())
    assert not found, (
        f"{page.relative_to(ROOT)} types benchmark figures into prose; render them from "
        f"proposals/<topic>/bench/*.json with a <!-- generated: module:function --> marker: {found}"
    )


def test_the_scan_catches_figures_and_skips_what_is_not_prose() -> None:
    typed = "costs 1.2–3× a decode, 54 µs at 512, 2.4 ms, 62% wasted, 5417 tok/s, 3,900× cheaper"
    assert typed_figures(typed) == [
        "line 1: 1.2–3×",
        "line 1: 54 µs",
        "line 1: 2.4 ms",
        "line 1: 62%",
        "line 1: 5417 tok/s",
        "line 1: 3,900×",
    ]
    skipped = "\n".join(
        [
            "```python",
            "print('1.44x')",
            "```",
            "    ```",
            "    2.7 ms",
            "    ```",
            "costs <!-- generated: proposals.kv_cache.docs:decode_step_range --> here",
            'vLLM wastes "under 4%", a `4x` pool, [link](bench/2x.json), 8 × 128 floats, "cutting',
            'it by up to 55%"',
            "Attention-24, opset 25, onnx 1.23.2, 2025-08-13, 10 steps, 0x7f00",
        ]
    )
    assert typed_figures(skipped) == []


FIGURE_MODULES = ("proposals.kv_cache.docs", "proposals.paged_attention.docs", "proposals.text_pipeline.docs")


def test_every_marker_names_a_function() -> None:
    from generator.markdown import GENERATED

    for page in PAGES:
        for module, function in GENERATED.findall(page.read_text()):
            assert callable(getattr(importlib.import_module(module), function, None)), (page.name, module, function)


def test_figure_markers_render_inline_text() -> None:
    """The figure markers sit inside sentences: each renders one non-empty line."""
    from generator.markdown import GENERATED

    markers = {m for page in PAGES for m in GENERATED.findall(page.read_text()) if m[0] in FIGURE_MODULES}
    assert {module for module, _ in markers} == set(FIGURE_MODULES)
    for module, function in sorted(markers):
        render = getattr(importlib.import_module(module), function)
        # sentences from the conformance matrix get a small matrix here: a real one means a verify run
        text = render(_MATRIX) if "matrix" in inspect.signature(render).parameters else render()
        assert isinstance(text, str) and text.strip() and "\n" not in text, (module, function, text)


def _cell(status: str) -> dict:
    return {"status": status}


_MATRIX = {
    "runtimes": [{"name": name} for name in ("reference", "onnxruntime", "openvino")],
    "cases": {
        f"{topic}/{case}": {
            "results": {"reference": _cell("pass"), "onnxruntime": _cell("pass"), "openvino": _cell(ov)}
        }
        for topic in ("paged_attention", "text_pipeline")
        for case, ov in (("a", "pass"), ("b", "unsupported"))
    },
}


def test_matrix_sentences_count_the_topic_cases() -> None:
    from proposals.paged_attention.docs import zoo_pass_summary

    assert zoo_pass_summary(_MATRIX) == (
        "Of the [2 zoo cases](#zoo-cases), 2 pass on onnxruntime, 2 on `onnx.reference` and 1 on OpenVINO"
    )


def test_figure_formatting() -> None:
    from generator import bench

    assert bench.times(1.4399) == "1.44×" and bench.times(3907.4) == "3,907×"
    assert bench.times_range([1.737, 1.197]) == "1.2–1.7×" and bench.times_range([1.61, 1.64]) == "1.6×"
    assert bench.percent(0.623) == "62%" and bench.percent_range([0.0213, 0.0056]) == "0.6–2.1%"
    assert [bench.duration(s) for s in (2.8e-6, 2.664e-4, 0.0112, 1.5)] == ["2.8 µs", "266 µs", "11 ms", "1.5 s"]
    assert bench.duration_range([2.9e-6, 2.73e-6]) == "2.7–2.9 µs"


def test_machine_is_recorded_and_named() -> None:
    from generator import bench

    here = bench.machine()
    assert {"cpu", "cpus", "machine", "python", "onnxruntime", "onnx"} <= set(here)
    assert here["cpu"] in bench.machine_text(here)
    old = {"machine": "x86_64", "processor": "unknown", "cpus": 2, "python": "3.11.7", "onnxruntime": "1.32.0"}
    assert (
        bench.machine_text(old) == "x86_64, CPU model not recorded, 2 logical CPUs, Python 3.11.7, onnxruntime 1.32.0"
    )


def test_exported_posts_carry_the_figures(tmp_path: Path) -> None:
    """``make snippets`` expands the markers too, so an exported post keeps its figures."""
    from generator.snippets import Exporter
    from proposals.paged_attention.docs import max_length_waste

    post = tmp_path / "post.md"
    post.write_text(
        "Max-length allocation wastes <!-- generated: proposals.paged_attention.docs:max_length_waste -->.\n"
    )
    exported = Exporter(post, tmp_path / "out").export().read_text()
    assert exported == f"Max-length allocation wastes {max_length_waste()}.\n"


SHARED_SHAPE_TOPICS = ("kv_cache", "moe", "paged_attention", "quantized_attention", "text_pipeline")


@pytest.mark.parametrize(
    "result",
    sorted(p for topic in SHARED_SHAPE_TOPICS for p in (ROOT / "proposals" / topic / "bench").glob("*.json")),
    ids=lambda p: p.relative_to(ROOT).as_posix(),
)
def test_every_bench_result_has_the_shared_shape(result: Path) -> None:
    """One shape for every committed result (generator.bench.write_json): which benchmark,
    where it ran, what was measured, and one record per measurement."""
    from generator import bench

    data = bench.load_results(result.parent.parent.name, result.stem)
    assert data["benchmark"] == result.stem
    assert isinstance(data["setup"], dict) and data["rows"] and all(isinstance(r, dict) for r in data["rows"])


def test_markdown_table() -> None:
    from generator.bench import markdown_table

    assert markdown_table(["L", "time"], [[512, "2.8 µs"]], align="rr") == "| L | time |\n|---:|---:|\n| 512 | 2.8 µs |"
