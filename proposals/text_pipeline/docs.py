"""Figures of the text-pipeline page's benchmark section, rendered from the committed
``proposals/text_pipeline/bench/cache.json`` through ``<!-- generated: module:function -->``
markers, so ``make bench`` updates the prose together with the table."""

from __future__ import annotations

from collections.abc import Mapping

from generator.bench import duration, load_results, machine_text, markdown_table, percent, times, times_range

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


# Throughput side by side (``proposals/text_pipeline/throughput.py``, bench/throughput.json).
ENGINE_COLUMNS = ("onnxruntime", "onnxruntime-genai", "openvino-genai", "transformers")
ORTGENAI_GOAL = 1.2  # this pipeline within 1.2x of onnxruntime-genai's tokens/s
INPLACE_GOAL = 1.5  # in place at least 1.5x copying at 4096


def throughput_setup() -> str:
    """What the throughput bench ran: model, threads, decode tokens, rounds, versions, machine."""
    data = load_results(TOPIC, "throughput")
    setup, model = data["setup"], data["setup"]["model"]
    rounds = ", ".join(f"{n} at {cell.replace('x', ' × ')}" for cell, n in setup["rounds"].items())
    versions = ", ".join(f"{name} {v}" for name, v in setup["versions"].items())
    return (
        f"a seeded Llama (hidden {model['hidden_size']}, {model['num_hidden_layers']} layers, "
        f"{model['num_attention_heads']} query / {model['num_key_value_heads']} KV heads of {model['head_dim']}, "
        f"MLP {model['intermediate_size']}), {setup['threads']} threads per engine, greedy, "
        f"{setup['new_tokens']} new tokens per run; "
        f"rounds per cell (context × batch): {rounds} ({versions}; measured on {machine_text(data['machine'])})"
    )


def throughput_table() -> str:
    """Decode tokens/s (the batch's tokens after the first) and time to first token, per engine."""
    rows = []
    for r in load_results(TOPIC, "throughput")["rows"]:
        tok, ttft = r["decode_tokens_per_s"], r["ttft_s"]
        cells = [f"{tok[e]:,.0f} / {duration(ttft[e])}" for e in ENGINE_COLUMNS]
        rows.append([r["context"], r["batch"], *cells])
    header = ["context", "batch", *[f"{e}: tok/s / TTFT" for e in ENGINE_COLUMNS]]
    return markdown_table(header, rows, align="rr" + "r" * len(ENGINE_COLUMNS))


def throughput_ratios() -> str:
    """Each engine's decode tokens/s and time to first token over this pipeline's."""
    rows = []
    for r in load_results(TOPIC, "throughput")["rows"]:
        tok, ttft = r["tokens_per_s_over_onnxruntime"], r["ttft_over_onnxruntime"]
        rows.append([r["context"], r["batch"], *[f"{times(tok[e])} / {times(ttft[e])}" for e in ENGINE_COLUMNS[1:]]])
    header = ["context", "batch", *[f"{e}: tok/s / TTFT over onnxruntime" for e in ENGINE_COLUMNS[1:]]]
    return markdown_table(header, rows, align="rr" + "r" * (len(ENGINE_COLUMNS) - 1))


def _cells(rows) -> str:
    return f"context {rows['context']}, batch {rows['batch']}"


def ortgenai_goal() -> str:
    """The goal 'within 1.2x of onnxruntime-genai's tokens/s', cell by cell."""
    rows = load_results(TOPIC, "throughput")["rows"]
    ratios = [(r, 1.0 / r["tokens_per_s_over_onnxruntime"]["onnxruntime-genai"]) for r in rows]
    missed = [f"{_cells(r)} ({times(x)})" for r, x in ratios if x < 1 / ORTGENAI_GOAL]
    span = times_range((x for _, x in ratios), 2)
    verdict = "met in every cell" if not missed else f"missed at {', '.join(missed)}"
    return (
        f"this pipeline's decode speed is {span} onnxruntime-genai's over the four cells "
        f"(goal: at least {times(1 / ORTGENAI_GOAL)}, i.e. within {times(ORTGENAI_GOAL, 1)}): {verdict}"
    )


def inplace_goal() -> str:
    """In place over copying at 4096 tokens: the goal is read on the cache bench (the bench
    the goal was set on, timed step by step); the whole generations of the throughput bench
    give the same ratio on the larger model, with far fewer samples."""
    cache = next(r for r in load_results(TOPIC, "cache")["rows"] if r["context"] == 4096)
    big = next(r for r in load_results(TOPIC, "throughput")["rows"] if r["context"] == 4096 and r["batch"] == 1)
    tok = big["decode_tokens_per_s"]
    ratio = cache["decode_speedup_inplace_over_copying"]
    return (
        f"{times(ratio)} on the cache bench at 4096 tokens (goal {times(INPLACE_GOAL, 1)}: "
        f"{'met' if ratio >= INPLACE_GOAL else 'missed'}); on the throughput model, whole generations at "
        f"4096 tokens, batch 1, give {times(tok['onnxruntime'] / tok['onnxruntime (copying)'])} "
        f"({big['rounds']} rounds)"
    )


def profile_table() -> str:
    """The decode loop's functions with the most own time (cProfile), with their share."""
    data = load_results(TOPIC, "throughput_profile")
    rows = [
        [f"`{r['function']}`", r["calls"], duration(r["own_s"] / r["calls"]), percent(r["share"], 1)]
        for r in data["rows"]
    ]
    return markdown_table(["function", "calls", "own time per call", "share of the loop"], rows, align="lrrr")


def profile_summary() -> str:
    """How much of a decode step is onnxruntime's graph run, and how much the Python loop."""
    data = load_results(TOPIC, "throughput_profile")
    setup = data["setup"]
    graph = sum(r["share"] for r in data["rows"] if "run_with_iobinding" in r["function"])
    return (
        f"over {setup['decode_steps']} decode steps at context {setup['context']}, batch {setup['batch']}, "
        f"onnxruntime's `run_with_iobinding` (the graph) takes {percent(graph, 1)} of the loop's time; "
        f"everything in Python (logits processing, choosing, binding) the remaining {percent(1 - graph, 1)}"
    )


def ort_ops_table(name: str = "throughput_ort_ops") -> str:
    """onnxruntime's own profile of the same decode runs: kernel time per op type."""
    rows = [
        [f"`{r['op']}`", duration(r["s_per_step"]), percent(r["share"], 1)]
        for r in load_results(TOPIC, name)["rows"]
        if r["share"] >= 0.005
    ]
    return markdown_table(["op type", "kernel time per step", "share"], rows, align="lrr")


def cache_ort_ops_summary() -> str:
    """The same op shares for an in-place decode step of the cache bench's model at 4096."""
    return ort_ops_summary("cache_ort_ops")


def ort_ops_summary(name: str = "throughput_ort_ops") -> str:
    """The op types that take most of a decode step's kernel time."""
    rows = load_results(TOPIC, name)["rows"]
    share = {r["op"]: r["share"] for r in rows}
    return (
        f"`Attention` takes {percent(share.get('Attention', 0.0), 1)} of the kernel time and `MatMul` "
        f"{percent(share.get('MatMul', 0.0), 1)}; `TensorScatter`, the in-place cache write, "
        f"{percent(share.get('TensorScatter', 0.0), 1)}"
    )
