"""What the quantized-attention page prints when it is built, read from the committed JSON
(``bench/decode_step.json``, ``bench/accuracy.json``) or computed from the schema."""

from __future__ import annotations

from functools import cache

from generator.bench import load_results, markdown_table

TOPIC = "quantized_attention"


@cache
def _json(name: str) -> dict:
    return load_results(TOPIC, name)


def _study(name: str) -> list[dict]:
    """The accuracy rows of one study: ``synthetic``, ``int4_keys_only`` or ``decoder``."""
    return [row for row in _json("accuracy")["rows"] if row["study"] == name]


def spec_markdown() -> str:
    """The rendered spec section: schema, function body, zoo examples."""
    from generator.opspec import render_spec
    from generator.registry import select
    from proposals.quantized_attention.function_op import QuantizedAttention
    from proposals.quantized_attention.spec import SCHEMA

    examples = [spec for spec in select(["quantized_attention"]) if spec.name.startswith("op_")]
    return render_spec(SCHEMA, QuantizedAttention.to_function_proto(), examples, catalogue_link="../../catalogue.md")


def bench_table() -> str:
    """The committed decode bench as a Markdown table (median ms per step, ratio, roofline share)."""
    data = _json("decode_step")
    variants = list(data["rows"][0]["seconds"])

    def cell(row: dict, v: str) -> str:
        share = row["roofline_share"][v]
        return f"{row['seconds'][v] * 1e3:.2f} ms ({row['ratios'][v]:.2f}×, {share:.0%} of roofline)"

    rows = [[row["L"], *(cell(row, v) for v in variants)] for row in data["rows"]]
    per_token = data["rows"][0]["cache_bytes_per_token"]
    rows.append(["cache bytes / token", *(f"{per_token[v]} B" for v in variants)])
    bandwidth = data["setup"]["bandwidth_gbs"]
    return (
        markdown_table(["L", *variants], rows)
        + f"\n\nDRAM read bandwidth measured in the same run: {bandwidth:.1f} GB/s."
    )


def synthetic_setup() -> str:
    """The synthetic key distribution, from the constants that build it."""
    from proposals.quantized_attention.accuracy import OUTLIER_CHANNELS, OUTLIER_SCALE, SYNTHETIC_TOKENS

    return (
        f"{SYNTHETIC_TOKENS} keys with {len(OUTLIER_CHANNELS)} outlier channels {OUTLIER_SCALE:g}× larger than the rest"
    )


def _row(length: int) -> dict:
    return next(r for r in _json("decode_step")["rows"] if r["L"] == length)


def fusion_summary() -> str:
    """One sentence per context length: what the unfused form costs and what fusion buys."""
    from proposals.quantized_attention.bench import FP32, GQA, UNFUSED

    parts = []
    for row in _json("decode_step")["rows"]:
        r = row["ratios"]
        parts.append(
            f"at {row['L'] // 1024}k tokens the unfused int8 step takes {r[UNFUSED]:.2f}× the fp32 step's time "
            f"and the GQA int8 kernel {r[GQA]:.2f}× ({r[UNFUSED] / r[GQA]:.1f}× faster than unfused)"
        )
    per_token = _row(_json("decode_step")["rows"][0]["L"])["cache_bytes_per_token"]
    text = "; ".join(parts)
    return (
        text[0].upper()
        + text[1:]
        + f". An int8 cache holds {per_token[FP32] // per_token[GQA]}× more tokens in the same memory "
        f"({per_token[GQA]} vs {per_token[FP32]} bytes per token)."
    )


def accuracy_table() -> str:
    decoders = {(r["model"], r["config"]): r for r in _study("decoder")}
    rows = []
    for row in _study("synthetic"):
        cells = [row["config"], f"{row['relative_error']:.3g}"]
        for model in ("llama", "qwen3"):
            d = decoders[(model, row["config"])]
            cells += [f"{d['kl']:.3g}", f"{d['token_agreement']:.0%}"]
        rows.append(cells)
    header = [
        "cache (K / V)",
        "synthetic attention error",
        "Llama KL",
        "Llama agreement",
        "Qwen3 KL",
        "Qwen3 agreement",
    ]
    return markdown_table(header, rows)


def key_granularity_verdict() -> str:
    """Whether "per-channel keys beat per-token keys at 4 bits" reproduces, with the numbers."""
    keys = {row["granularity"]: row["relative_error"] for row in _study("int4_keys_only")}
    decoders = {(r["model"], r["config"]): r for r in _study("decoder")}
    synthetic = "reproduces" if keys["per_channel"] < keys["per_token"] else "does not reproduce"
    parts = [
        f"On the synthetic outlier keys it **{synthetic}**: int4 keys alone give attention error "
        f"{keys['per_channel']:.3g} per channel vs {keys['per_token']:.3g} per token "
        f"({keys['per_token_group']:.3g} per token in groups of 32, {keys['per_tensor']:.3g} per tensor)."
    ]
    for model in ("llama", "qwen3"):
        channel = decoders[(model, "int4 K per_channel / V per_channel")]["kl"]
        token = decoders[(model, "int4 K per_token / V per_token")]["kl"]
        verdict = "reproduces" if channel < token else "does not reproduce"
        parts.append(
            f"On the tiny {model} decoder it {verdict} (KL {channel:.3g} per channel vs {token:.3g} per token)."
        )
    return " ".join(parts)
