"""Figures and tables of the linear-attention page and its blog post, from the committed bench
JSON (``proposals/linear_attention/bench/*.json``), the committed fuzz results, or computed
when the site is built (the transformers survey). Pages include them with
``<!-- generated: proposals.linear_attention.docs:<function> -->`` markers."""

from __future__ import annotations

import json

from generator.bench import (
    ROOT,
    duration,
    load_results,
    machine_text,
    markdown_table,
    percent,
    percent_range,
    times_range,
)

TOPIC = "linear_attention"
FUZZ_JSON = ROOT / "conformance" / "results" / "fuzz.json"  # `make fuzz`'s committed results (read, not imported)
ONE = "IOBinding, one buffer"
TWO = "IOBinding, two buffers"
PLAIN = "plain run"
COPY = "one state copy"
NO_SCAN = "standard ops, no Scan"


def _rows() -> list[dict]:
    return load_results(TOPIC, "decode_step")["rows"]


def _kib(row: dict) -> str:
    size = row["state_bytes"] >> 10
    return f"{size >> 10} MiB" if size >= 1024 else f"{size} KiB"


def measured_on() -> str:
    """Where and with what the committed decode-step run was measured."""
    data = load_results(TOPIC, "decode_step")
    return f"{data['setup']['threads']} threads, {machine_text(data['machine'])}"


def decode_step_table() -> str:
    """Median time of one gated-delta decode step per state size, four ways."""
    rows = []
    for row in _rows():
        seconds = row["seconds"]
        rows.append(
            [
                f"{_kib(row)} (H = {row['heads']})",
                duration(seconds[PLAIN]),
                duration(seconds[TWO]),
                duration(seconds[ONE]),
                duration(seconds[NO_SCAN]),
                f"{row['ratios'][PLAIN]:.2f}×",
                duration(seconds[COPY]),
                percent(row["share_of_limit"], 1),
            ]
        )
    header = ["state", "plain run", "2 buffers", "1 buffer", "no Scan", "plain / 1 buffer", "1 copy", "share"]
    return markdown_table(header, rows, align="lrrrrrrr")


def no_scan_over_body() -> str:
    """The Scan-free standard-op decode step against the op's body (one buffer), over every size."""
    return times_range((row["ratios"][NO_SCAN] for row in _rows()), places=2)


def plain_over_in_place() -> str:
    """How much slower the plain run is than the one-buffer binding, over every size."""
    return times_range(row["ratios"][PLAIN] for row in _rows())


def two_over_one() -> str:
    """The two-buffer binding against the one-buffer one, over every size."""
    return times_range((row["ratios"][TWO] for row in _rows()), places=2)


def share_range() -> str:
    """The in-place step's share of the one-pass limit, smallest to largest."""
    return percent_range(row["share_of_limit"] for row in _rows())


def profile_table() -> str:
    """onnxruntime's profile of the in-place step at the largest state: kernels per step."""
    data = load_results(TOPIC, "in_place_profile")
    rows = [
        [f"`{row['op']}`", f"{row['calls_per_step']:g}", duration(row["us_per_step"] * 1e-6)]
        for row in data["rows"][:8]
    ]
    heads = data["setup"]["heads"]
    return (
        f"{heads} x 128 x 128 state, mean over {data['setup']['steps']} steps (`Scan` includes its body's kernels, "
        "listed again by type):\n\n" + markdown_table(["kernel", "calls per step", "time per step"], rows, align="lrr")
    )


def coverage_table() -> str:
    """Every gated-delta mixer of the installed transformers converted and checked, then the
    other recurrent families (computed when the page is built)."""
    import transformers

    from proposals.linear_attention import survey

    transformers.logging.set_verbosity_error()
    checks, others = survey.survey()
    rows = [
        [
            f"`{c.model_type}`",
            f"`{c.mixer}`",
            "**converted**",
            f"max abs error {c.max_abs_error:.1e} (outputs up to {c.max_abs_output:.1f}); "
            f"{sum(c.nodes.values())} nodes",
        ]
        for c in checks
    ]
    rows += [[f"`{f.model_type}`", f"`{f.mixer}`", f.verdict, f.reason] for f in others]
    intro = (
        f"transformers {transformers.__version__}; the converted rows ran when this page was built, each a "
        f"{survey.PREFILL}-token prefill then {survey.DECODE} decode steps, one LinearAttention and one Conv "
        "per layer.\n\n"
    )
    return intro + markdown_table(["model type", "mixer", "verdict", "evidence / what the op would need"], rows)


def fuzz_summary() -> str:
    """How many LinearAttention configurations the committed fuzz run drew, and their outcome
    on onnxruntime."""
    data = json.loads(FUZZ_JSON.read_text())["ops"]["LinearAttention"]
    counts = data["features"]["all"]["onnxruntime"]["counts"]
    empty = data["features"].get("T = 0 (no new token)", {}).get("onnxruntime", {}).get("counts", {})
    diverged = counts.get("divergence", 0)
    where = " (every one with T = 0)" if diverged and empty.get("divergence", 0) == diverged else ""
    return (
        f"{data['configurations']} drawn configurations; onnxruntime passes {counts.get('pass', 0)} and "
        f"diverges on {diverged}{where}"
    )
