"""What the quantized-attention page prints when it is built, read from the committed JSON
(``bench/decode_step.json``, ``bench/accuracy.json``) or computed from the schema."""

from __future__ import annotations

import json
from functools import cache

from generator.bench import results_dir

TOPIC = "quantized_attention"


@cache
def _json(name: str) -> dict:
    return json.loads((results_dir(TOPIC) / f"{name}.json").read_text())


def spec_markdown() -> str:
    from proposals.quantized_attention.spec import spec_markdown as render

    return render()


def bench_table() -> str:
    from proposals.quantized_attention.bench import results_table

    return results_table()


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
    data = _json("accuracy")
    decoders = {(r["model"], r["config"]): r for r in data["decoders"]}
    lines = [
        "| cache (K / V) | synthetic attention error | Llama KL | Llama agreement | Qwen3 KL | Qwen3 agreement |",
        "|---|---|---|---|---|---|",
    ]
    for row in data["synthetic"]:
        cells = [f"{row['relative_error']:.3g}"]
        for model in ("llama", "qwen3"):
            d = decoders[(model, row["config"])]
            cells += [f"{d['kl']:.3g}", f"{d['token_agreement']:.0%}"]
        lines.append(f"| {row['config']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def key_granularity_verdict() -> str:
    """Whether "per-channel keys beat per-token keys at 4 bits" reproduces, with the numbers."""
    data = _json("accuracy")
    keys = data["int4_keys_only"]
    decoders = {(r["model"], r["config"]): r for r in data["decoders"]}
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
