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


def _checkpoint_rows() -> list[dict]:
    return [r for r in _json("accuracy_checkpoints")["rows"] if "config" in r]


def checkpoint_accuracy_table() -> str:
    """Per packaged checkpoint and config: greedy agreement, KL(fp32 ‖ quantized) and perplexity."""
    models = list(dict.fromkeys(r["model"] for r in _checkpoint_rows()))
    by = {(r["model"], r["config"]): r for r in _checkpoint_rows()}
    configs = list(dict.fromkeys(r["config"] for r in _checkpoint_rows()))

    def cell(row: dict | None) -> str:
        if row is None or "skipped" in row:
            return "—" if row is None else row["skipped"]
        return f"{row['token_agreement']:.0%} · {row['kl']:.3g} · {row['perplexity']:.4g}"

    rows = [[config, *(cell(by.get((m, config))) for m in models)] for config in configs]
    return markdown_table(
        ["config", *(f'<span class="nowrap">{m}:</span> agreement · KL · ppl' for m in models)],
        rows,
        align="l" + "r" * len(models),
    )


def checkpoint_setup() -> str:
    """Prompts, tokens and the held-out text of the checkpoint study."""
    setup = _json("accuracy_checkpoints")["setup"]
    scope = "; ".join(
        f"{model}: {s['prompts']} prompts, "
        + ("every config" if s["configs"] == "all" else f"the {len(s['configs'])} configs of the KIVI question")
        for model, s in setup["scope"].items()
    )
    return (
        f"{setup['new_tokens']} greedy tokens per prompt ({scope}); KL and perplexity teacher-forced "
        f"over the first {setup['held_out_tokens']} tokens of the paragraphs of `{setup['held_out']}`"
    )


def kivi_verdict() -> str:
    """Does KIVI's claim (per-channel keys beat per-token keys at 4 bits) hold on each checkpoint?"""
    by = {(r["model"], r["config"]): r for r in _checkpoint_rows()}
    parts = []
    for model in dict.fromkeys(r["model"] for r in _checkpoint_rows()):
        channel = by[(model, "int4 K per_channel / V per_token")]
        token = by[(model, "int4 K per_token / V per_token")]
        wins = channel["kl"] < token["kl"] and channel["perplexity"] <= token["perplexity"]
        parts.append(
            f"{model}: {'yes' if wins else 'no'}, int4 keys per channel (values per token) reach KL "
            f"{channel['kl']:.3g} and perplexity {channel['perplexity']:.4g}, per token KL {token['kl']:.3g} "
            f"and perplexity {token['perplexity']:.4g} (agreement {channel['token_agreement']:.0%} against "
            f"{token['token_agreement']:.0%})"
        )
    return "; ".join(parts)


def best_checkpoint_config() -> str:
    """The config with the lowest KL on each checkpoint, and its agreement."""
    parts = []
    for model in dict.fromkeys(r["model"] for r in _checkpoint_rows()):
        rows = [r for r in _checkpoint_rows() if r["model"] == model and r["config"] != "float32" and "kl" in r]
        best = min(rows, key=lambda r: r["kl"])
        parts.append(f"{model}: {best['config']} (KL {best['kl']:.3g}, agreement {best['token_agreement']:.0%})")
    return "; ".join(parts)


def key_outliers() -> str:
    """Per checkpoint: the range over layers of max / median per-channel key magnitude."""
    parts = []
    for r in _json("accuracy_checkpoints")["rows"]:
        if "key_channel_outlier_ratio_per_layer" in r:
            ratios = r["key_channel_outlier_ratio_per_layer"]
            parts.append(f"{r['model']}: {min(ratios):.1f}–{max(ratios):.1f}× over its {len(ratios)} layers")
    return "; ".join(parts)
