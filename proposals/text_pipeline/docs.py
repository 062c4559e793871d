"""Figures of the text-pipeline page's benchmark section, rendered from the committed
``proposals/text_pipeline/bench/cache.json`` through ``<!-- generated: module:function -->``
markers, so ``make bench`` updates the prose together with the table."""

from __future__ import annotations

from collections.abc import Mapping

from generator.bench import duration, load_results, machine_text, markdown_table, times, times_range

TOPIC = "text_pipeline"


def bench_setup() -> str:
    """``onnxruntime 1.32.0 CPU with 2 threads``, as the committed run recorded it, and where."""
    data = load_results(TOPIC, "cache")
    return (
        f"onnxruntime {data['machine']['onnxruntime']} CPU with {data['setup']['threads']} threads "
        f"(measured on {machine_text(data['machine'])})"
    )


def results_table() -> str:
    """The committed run as a Markdown table: decode speed and time to first token, in place
    vs copying, per context length."""
    rows = []
    for r in load_results(TOPIC, "cache")["rows"]:
        tok, ttft = r["decode_tokens_per_s"], r["ttft_s"]
        rows.append(
            [
                r["context"],
                f"{tok['in-place']:.0f}",
                f"{tok['copying']:.0f}",
                times(r["decode_speedup_inplace_over_copying"]),
                duration(ttft["in-place"]),
                duration(ttft["copying"]),
                times(r["ttft_ratio_copying_over_inplace"]),
            ]
        )
    header = ["context", "decode tok/s in place", "copying", "ratio", "TTFT in place", "copying", "ratio"]
    return markdown_table(header, rows, align="r" * len(header))


def decode_speedups() -> str:
    """In-place decode speed over copying, per context length."""
    rows = load_results(TOPIC, "cache")["rows"]
    return ", ".join(f"{times(r['decode_speedup_inplace_over_copying'])} at {r['context']} tokens" for r in rows)


def ttft_ratio_range() -> str:
    """Copying over in-place time to first token, over every context length."""
    rows = load_results(TOPIC, "cache")["rows"]
    return times_range((r["ttft_ratio_copying_over_inplace"] for r in rows), 2)


def zoo_pass_summary(matrix: Mapping | None = None) -> str:
    """How many text-pipeline zoo cases pass on each runtime, from the conformance matrix."""
    from generator.docs import pass_counts

    cases, passed = pass_counts(TOPIC, matrix)
    return (
        f"Of the {cases} cases, {passed['onnxruntime']} pass on onnxruntime, {passed['reference']} on "
        f"the onnx reference evaluator and {passed['openvino']} on OpenVINO"
    )
