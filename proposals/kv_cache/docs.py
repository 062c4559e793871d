"""Figures and machine-dependent sentences of the KV-cache page and its blog post, rendered
from the committed bench JSON (``proposals/kv_cache/bench/*.json``) or measured on the
machine that builds the site. Pages include them with ``<!-- generated: module:function -->``
markers, so ``make bench`` updates the prose with the tables."""

from __future__ import annotations

from generator.bench import duration, duration_range, load_results, machine_text, markdown_table, times_range

TOPIC = "kv_cache"
IN_PLACE_UPDATE = "TensorScatter, IOBinding in place"
CONCAT = "Concat (Attention-23 style)"
PLAIN_UPDATE = "TensorScatter, plain run"
IN_PLACE_STEP = "TensorScatter + Attention-24, IOBinding in place"
PLAIN_STEP = "TensorScatter + Attention-24, plain run"
ATTENTION23 = "Attention-23 past/present"


def _rows(name: str) -> list[dict]:
    return load_results(TOPIC, name)["rows"]


def bench_runtime() -> str:
    """``onnxruntime 1.32.0 CPU with 2 threads``, as the committed run recorded it."""
    data = load_results(TOPIC, "kv_update")
    return f"onnxruntime {data['machine']['onnxruntime']} CPU with {data['setup']['threads']} threads"


def measured_on() -> str:
    """The machine of the committed timing run."""
    return f"measured on {machine_text(load_results(TOPIC, 'kv_update')['machine'])}"


def results_table(name: str) -> str:
    """The committed results of one benchmark as a Markdown table: median per step and the
    ratio to the baseline, per cache length."""
    data = load_results(TOPIC, name)
    variants = list(data["rows"][0]["seconds"])
    rows = [
        [f"{row['L']}", *(f"{duration(row['seconds'][v])} ({row['ratios'][v]:.1f}×)" for v in variants)]
        for row in data["rows"]
    ]
    return f"**{name}** (median per step; × = time / {data['setup']['baseline']})\n\n" + markdown_table(
        ["L", *variants], rows, align="r" * (len(variants) + 1)
    )


def inplace_update_range() -> str:
    """The in-place update's time per step over every cache length."""
    rows = _rows("kv_update")
    return (
        f"{duration_range(r['seconds'][IN_PLACE_UPDATE] for r in rows)} per step from "
        f"`L = {rows[0]['L']}` to `L = {rows[-1]['L']}`"
    )


def _per_length(rows: list[dict], variant: str) -> list[str]:
    return [f"{duration(r['seconds'][variant])} at {r['L']}" for r in rows]


def copy_costs() -> str:
    """What both copying updates cost at each cache length."""
    rows = _rows("kv_update")
    concat = _per_length(rows, CONCAT)
    plain = ", ".join(duration(r["seconds"][PLAIN_UPDATE]) for r in rows)
    return f"Concat takes {', '.join(concat[:-1])} and {concat[-1]}; TensorScatter with a plain `run()` takes {plain}"


def inplace_advantage() -> str:
    """How much cheaper the in-place update is than either copy at the longest cache."""
    last = _rows("kv_update")[-1]
    ratios = [last["ratios"][CONCAT], last["ratios"][PLAIN_UPDATE]]
    return f"At `L = {last['L']}` the in-place update is {times_range(ratios, 0)} cheaper than either"


def decode_step_speedup() -> str:
    """How much faster the in-place TensorScatter step is than Attention-23, over all L."""
    return times_range(r["ratios"][ATTENTION23] for r in _rows("decode_step"))


def decode_step_times() -> str:
    """In-place step vs Attention-23 step, per cache length."""
    rows = _rows("decode_step")
    return ", ".join(
        f"{duration(r['seconds'][IN_PLACE_STEP])} vs {duration(r['seconds'][ATTENTION23])} at {r['L']}" for r in rows
    )


def plain_step_vs_attention23() -> str:
    """The copying TensorScatter step's time relative to Attention-23's, over all L."""
    rows = _rows("decode_step")
    span = times_range((r["seconds"][PLAIN_STEP] / r["seconds"][ATTENTION23] for r in rows), 2)
    return f"Run plainly (copying), the TensorScatter graph takes {span} the time of Attention-23"


# The first pitfall depends on the CPU: OpenVINO picks bf16 only where the CPU has it.


def _evidence() -> dict:
    return load_results(TOPIC, "openvino_precision")


def _worst(errors: list[float]) -> float:
    return max(errors)


def openvino_bf16_evidence() -> str:
    """The committed OpenVINO precision run: where, what the default was, what bf16 gave."""
    data = _evidence()
    top_left, *others = data["rows"]
    setup = data["setup"]
    flags = ", ".join(setup["cpu_flags"]) or "none"
    rounded = max(_worst(row["max_abs_err"]["bf16"]) for row in others)
    return (
        f"on {machine_text(data['machine'])} (bf16 CPU flags: {flags}), OpenVINO "
        f"{setup['openvino'].split('-')[0]} chose `{setup['default_precision']}` by default; at bf16 the "
        f"top-left case's max error was {_worst(top_left['max_abs_err']['bf16']):.1e} for outputs up to "
        f"{top_left['max_abs_expected']:.1f}, the two neighbours' at most {rounded:.1e}, and at f32 "
        f"{_worst(top_left['max_abs_err']['f32']):.1e} "
        f"([`bench/openvino_precision.json`](bench/openvino_precision.json))"
    )


def openvino_build_machine() -> str:
    """What the machine building this page does, measured now (the block below prints it)."""
    import openvino

    from generator.bench import cpu_flags
    from proposals.kv_cache.bench import BF16_FLAGS
    from proposals.kv_cache.demos import openvino_top_left_error

    default = openvino.Core().get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()
    flags = ", ".join(cpu_flags(BF16_FLAGS)) or "none"
    wrong = openvino_top_left_error("bf16") > GARBAGE
    shows = "the bf16 hint returns garbage here too" if wrong else "the bf16 hint gives a correct result here"
    return (
        f"The machine that built this page ({machine_text(_here())}, bf16 CPU flags: {flags}) "
        f"defaults to `{default}`, and {shows}"
    )


GARBAGE = 0.1  # bf16 rounding of these outputs is about 1e-3; wrong attention is of order 1


def _here() -> dict:
    from generator.bench import machine

    return machine()


def _mobius() -> dict:
    return load_results("text_pipeline", "mobius_inplace")  # written by proposals/text_pipeline/mobius_forms.py


NOWRAP_SMOLLM2 = '<span class="nowrap">SmolLM2-135M</span>'  # a model id keeps whole in a table
NOWRAP_RUN = 'run (<span class="nowrap">SmolLM2-135M-Instruct</span>, greedy)'  # a model id keeps whole


def mobius_inplace_tokens() -> str:
    """Greedy tokens of mobius-onnx's static-cache graph, per way of running it, against the copying run."""
    data = _mobius()
    rows = data["rows"]
    names = list(rows[0]["equal_to_copying"])
    n = data["setup"]["new_tokens"]
    table = [[name, " · ".join(f"{r['equal_to_copying'][name]}/{n}" for r in rows)] for name in names]
    return markdown_table(
        [
            NOWRAP_RUN,
            f"tokens equal to the copying run, {len(rows)} prompts",
        ],
        table,
    )


def mobius_inplace_verdict() -> str:
    """What the in-place checker says about mobius's graph and this project's decoder."""
    rule = _mobius()["setup"]["in_place_rule"]
    return "; ".join(
        f"{name}: {v['pairs']} cache pairs, {len(v['hazards']) or 'no'} hazard{'s' if len(v['hazards']) != 1 else ''}"
        for name, v in rule.items()
    )


def _fusion() -> dict:
    return load_results("text_pipeline", "gqa_fusion")  # written by proposals/text_pipeline/fused_decode.py


def fusion_hits() -> str:
    """Per packaged checkpoint: layers fused, each miss reason counted, greedy tokens against the standard graph."""
    rows = []
    for r in _fusion()["rows"]:
        misses = "; ".join(f"{n} × {reason}" for reason, n in r["misses"].items()) or "none"
        equal = " · ".join(f"{e}/{r['new_tokens']}" for e in r["tokens_equal"])
        rows.append([f"`{r['model']}`", f"{r['fused']} of {r['attention_layers']}", misses, equal])
    return markdown_table(["checkpoint", "layers fused", "misses", "greedy tokens equal to the standard graph"], rows)


def fusion_rates() -> str:
    """Decode steps per second with 64 tokens held, every form side by side."""
    data = _fusion()
    rates = data["setup"]["decode_steps_per_s"]
    rows = [[name, f"{rate:.1f}"] for name, rate in rates.items()]
    return markdown_table(
        [f"{NOWRAP_SMOLLM2}, batch 1, {data['setup']['held']} tokens held", "decode steps/s"], rows, align="lr"
    )


def fusion_conditions() -> str:
    """How the fusion's decode rates were measured: timing and the machine's load."""
    setup = _fusion()["setup"]
    load = setup.get("load_average")
    where = f"load average {min(load):.1f}–{max(load):.1f}" if load else "load average not recorded"
    return f"median of 9 interleaved batches of at least 0.3 s each, {setup['threads']} threads, {where}"


def fusion_goals() -> str:
    """The two goals of the fusion, met or missed, from the committed rates."""
    setup = _fusion()["setup"]
    rates, (small, large) = setup["decode_steps_per_s"], setup["capacities"]
    fused_vs_mobius = rates["mobius GQA (growing cache)"] / rates[f"fused GQA, {small} slots"]
    flat = {
        kind: rates[f"{kind}, {large} slots"] / rates[f"{kind}, {small} slots"] for kind in ("fused GQA", "standard")
    }

    def verdict(ok: bool) -> str:
        return "met" if ok else "missed"

    return (
        f"fused decode takes {fused_vs_mobius:.2f}× the time of mobius's GQA graph per step "
        f"(goal ≤ 1.05×: {verdict(fused_vs_mobius <= 1.05)}); at {large} slots against {small}, "
        f"the fused graph keeps {flat['fused GQA']:.2f}× its rate (goal ≥ 0.9: {verdict(flat['fused GQA'] >= 0.9)}) "
        f"and the standard graph {flat['standard']:.2f}× (goal ≥ 0.9: {verdict(flat['standard'] >= 0.9)})"
    )


def real_shapes_table() -> str:
    """Per real layer shape and buffer: time per decode step of each form and its read-bandwidth share."""
    data = load_results(TOPIC, "real_shapes")
    variants = list(data["rows"][0]["seconds"])
    rows = [
        [
            f'<span class="nowrap">{r["layer"]}</span>',
            f"{r['held']:,} in {r['capacity']:,}",
            *(f"{duration(r['seconds'][v])} ({r['roofline_share'][v]:.0%})" for v in variants),
        ]
        for r in data["rows"]
    ]
    bandwidth = data["rows"][0]["bandwidth_gbs"]
    return (
        f"Median per step; in brackets, the K/V bytes the step must read over the measured read bandwidth "
        f"({bandwidth:.1f} GB/s):\n\n"
        + markdown_table(["layer", "tokens held in slots", *variants], rows, align="ll" + "r" * len(variants))
    )


def zoo_fusion_table() -> str:
    """The GQA fusion's hits on every decoder of the zoo (computed from the committed models)."""
    from collections import Counter
    from pathlib import Path

    import onnx

    from proposals.kv_cache.fusion import fusion_report

    rows = []
    for path in sorted((Path(__file__).resolve().parents[2] / "zoo" / "text_pipeline").glob("*/model.onnx")):
        report = fusion_report(onnx.load(path))
        misses = "; ".join(f"{n} × {why}" for why, n in Counter(report.misses.values()).items()) or "none"
        rows.append([path.parent.name.removeprefix("test_"), f"{report.fused} of {report.attention_nodes}", misses])
    return markdown_table(["zoo decoder", "layers fused", "misses"], rows)
