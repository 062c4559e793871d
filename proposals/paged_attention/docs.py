"""Figures of the paged-attention page and its blog post, rendered from the committed bench
JSON (``proposals/paged_attention/bench/decode.json`` and ``memory.json``). Pages include
them with ``<!-- generated: module:function -->`` markers, so ``make bench`` updates the
prose together with the tables."""

from __future__ import annotations

from collections.abc import Mapping

from generator.bench import (
    duration,
    load_results,
    machine_text,
    markdown_table,
    percent,
    percent_range,
    times,
    times_range,
)

TOPIC = "paged_attention"
BEST_GATHER = "paged [NB, BS, H·D] pool, 3-D K/V, in place"
PLAIN_RUN = "paged NHD pool, plain run"
FUNCTION_BODY = "PagedAttention function body, plain run"
WHOLE_POOL = "whole pool masked, no Gather, in place"
WIDE_POOL = "whole pool masked, pool 4x the context"
GOAL = 1.5  # the overhead the standard-op arrangements were meant to stay under


def _ratios(variant: str) -> dict[int, float]:
    """Context length -> ratio to the contiguous in-place decode, for one arrangement."""
    rows = load_results(TOPIC, "decode")["rows"]
    return {row["context"]: row["ratio"] for row in rows if row["variant"] == variant}


def _policies() -> dict[str, dict]:
    return {row["policy"]: row for row in load_results(TOPIC, "memory")["rows"]}


def bench_table(name: str = "decode") -> str:
    """The committed decode bench as a Markdown table of ratios (lower is better)."""
    rows = load_results(TOPIC, name)["rows"]
    contexts = sorted({row["context"] for row in rows})
    variants = list(dict.fromkeys(row["variant"] for row in rows))
    cell = {(r["variant"], r["context"]): r for r in rows}
    body = [
        [v, *(f"{times(cell[v, c]['ratio'])} ({duration(cell[v, c]['median_s'])})" for c in contexts)] for v in variants
    ]
    return markdown_table(["arrangement", *(f"context {c}" for c in contexts)], body, align="l" + "r" * len(contexts))


def best_gather_range() -> str:
    """The best Gather-based arrangement's cost over the contexts measured."""
    return times_range(_ratios(BEST_GATHER).values())


def plain_run_range() -> str:
    """The straightforward arrangement (NHD pool, plain run)."""
    return times_range(_ratios(PLAIN_RUN).values())


def function_body_range() -> str:
    """The PagedAttention function body, unfused, plain run."""
    return times_range(_ratios(FUNCTION_BODY).values())


def whole_pool_range() -> str:
    """Whole pool masked, when the pool holds only this sequence."""
    return times_range(_ratios(WHOLE_POOL).values())


def wide_pool_range() -> str:
    """Whole pool masked, with a pool larger than the context."""
    return times_range(_ratios(WIDE_POOL).values())


def best_gather_per_context() -> str:
    """``1.61× at context 2048 and 1.24× at 8192``."""
    parts = [
        f"{times(ratio)} at {'context ' if i == 0 else ''}{context}"
        for i, (context, ratio) in enumerate(_ratios(BEST_GATHER).items())
    ]
    return " and ".join(parts)


def goal_sentence() -> str:
    """Where the best arrangement meets the overhead goal, and where it misses it."""
    ratios = _ratios(BEST_GATHER)
    met = [str(c) for c, r in ratios.items() if r <= GOAL]
    missed = [str(c) for c, r in ratios.items() if r > GOAL]
    parts = [f"met at {', '.join(met)}"] if met else []
    parts += [f"missed at {', '.join(missed)}"] if missed else []
    return f"The {times(GOAL, 1)} goal is {' and '.join(parts)}"


def decode_setup() -> str:
    """Runtime, threads and machine of the committed decode run."""
    data = load_results(TOPIC, "decode")
    threads = "one thread" if data["setup"]["threads"] == 1 else f"{data['setup']['threads']} threads"
    return f"onnxruntime {data['machine']['onnxruntime']} CPU, {threads}, measured on {machine_text(data['machine'])}"


def max_length_waste() -> str:
    """Share of KV memory wasted by contiguous allocation at the maximum length."""
    return percent(_policies()["contiguous, max length"]["waste_share"])


def oracle_waste() -> str:
    """Share wasted by contiguous allocation sized at each sequence's actual final length."""
    return percent(_policies()["contiguous, actual length"]["waste_share"])


def paged_waste_range() -> str:
    """Share wasted by paged allocation, over the block sizes simulated."""
    return percent_range(
        r["waste_share"] for name, r in _policies().items() if name.startswith("paged, block") and "prefix" not in name
    )


def paged_fit_gain() -> str:
    """How many times as many sequences block-16 paging fits as max-length allocation."""
    policies = _policies()
    return times(policies["paged, block 16"]["sequences_fit"] / policies["contiguous, max length"]["sequences_fit"], 1)


def prefix_sharing_gain() -> str:
    """How many more sequences fit when full system-prompt blocks are shared."""
    policies = _policies()
    gain = policies["paged, block 16, prefix sharing"]["sequences_fit"] / policies["paged, block 16"]["sequences_fit"]
    return percent(gain - 1)


def shared_prompt_share() -> str:
    """The workload's share of requests that start with a shared system prompt (an input of
    the simulation, ``simulate.SHARED_FRACTION``)."""
    from proposals.paged_attention.simulate import SHARED_FRACTION

    return percent(SHARED_FRACTION)


def zoo_pass_summary(matrix: Mapping | None = None) -> str:
    """How many paged zoo cases pass on each runtime, from the conformance matrix."""
    from generator.docs import pass_counts

    cases, passed = pass_counts(TOPIC, matrix)
    return (
        f"Of the [{cases} zoo cases](#zoo-cases), {passed['onnxruntime']} pass on onnxruntime, "
        f"{passed['reference']} on `onnx.reference` and {passed['openvino']} on OpenVINO"
    )
