"""Bench: one decode step of paged attention from standard ops vs the contiguous in-place
decode (TensorScatter x2 + Attention-24), ORT CPU, block size 16; plus the memory simulator.

Run with ``python -m generator bench paged_attention`` (``--quick`` for a smoke test).
Every arrangement is checked against the baseline's output before it is timed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import onnx
import onnxruntime as ort

from generator.bench import plot_ratios, ratios, results_dir, time_interleaved, write_json
from generator.ort import session
from proposals.kv_cache.build import cache_step_model
from proposals.paged_attention import simulate
from proposals.paged_attention.bench_models import DecodeShape, paged_decode_model, paged_step_feeds, widen_pool
from proposals.paged_attention.build import PagedShape, paged_model

TOPIC = "paged_attention"
HEADS = {"q_heads": 32, "kv_heads": 8, "head_dim": 128}
BLOCK_SIZE = 16
THREADS = 1  # 2 shared cores: one thread keeps side-by-side ratios steadier
# name -> (layout, in place through IOBinding?, pool blocks / blocks in use)
ARRANGEMENTS = {
    "paged NHD pool, plain run": ("nhd", False, 1),
    "paged NHD pool, in place": ("nhd", True, 1),
    "paged [NB, BS, H·D] pool, 3-D K/V, in place": ("flat", True, 1),
    "paged head-major pool, in place": ("head_major", True, 1),
    "whole pool masked, no Gather, in place": ("whole_pool", True, 1),
    "whole pool masked, pool 4x the context": ("whole_pool", True, 4),
}
FUNCTION_BODY = "PagedAttention function body, plain run"
BASELINE = "contiguous, in place"


def bound_runner(
    model: onnx.ModelProto, feeds: dict[str, np.ndarray], state: dict[str, str], in_place: bool
) -> tuple[Callable[[], object], Callable[[], np.ndarray]]:
    """A zero-argument step function and a getter for its ``output``.

    With ``in_place`` the cache inputs named in ``state`` (input -> output) are bound to
    one OrtValue each, so ScatterND/TensorScatter update them without a copy.
    """
    sess = session(model, threads=THREADS)
    if not in_place:
        return (lambda: sess.run(None, feeds)), (lambda: sess.run(None, feeds)[0])
    io = sess.io_binding()
    io.bind_output(model.graph.output[0].name)  # first, so copy_outputs_to_cpu()[0] is it
    for name, array in feeds.items():
        if name in state:
            value = ort.OrtValue.ortvalue_from_numpy(array.copy())
            io.bind_ortvalue_input(name, value)
            io.bind_ortvalue_output(state[name], value)
        else:
            io.bind_cpu_input(name, array)

    def output() -> np.ndarray:
        sess.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()[0]

    return (lambda: sess.run_with_iobinding(io)), output


def baseline(shape: DecodeShape, feeds: dict[str, np.ndarray]):
    """Contiguous linear buffer [B, Hkv, context, D] with the same tokens as the paged feeds."""
    b, h, d, bs = shape.batch, shape.kv_heads, shape.head_dim, shape.block_size
    table = feeds["block_table"]

    def contiguous(pool: np.ndarray) -> np.ndarray:
        seq = pool[table].reshape(b, -1, h, d)[:, : shape.context]
        return np.ascontiguousarray(seq.transpose(0, 2, 1, 3))

    linear = {
        "q": feeds["query"],
        "k": feeds["key"].reshape(b, h, 1, d),
        "v": feeds["value"].reshape(b, h, 1, d),
        "past_key": contiguous(feeds["key_cache"]),
        "past_value": contiguous(feeds["value_cache"]),
        "write_indices": np.full(b, shape.context - 1, np.int64),
        "nonpad_kv_seqlen": feeds["seq_lens"],
    }
    del bs
    model = cache_step_model(q_heads=shape.q_heads, kv_heads=h, max_len=shape.context, head_dim=d)
    state = {"past_key": "present_key", "past_value": "present_value"}
    return bound_runner(model, linear, state, in_place=True)


def layout_feeds(nhd: dict[str, np.ndarray], shape: DecodeShape, layout: str) -> dict[str, np.ndarray]:
    """The NHD feeds re-laid out for another pool layout (same tokens, same blocks)."""
    feeds = dict(nhd)
    if layout == "flat":
        feeds["query"] = nhd["query"].reshape(shape.batch, 1, -1)
        for name in ("key_cache", "value_cache"):
            feeds[name] = nhd[name].reshape(shape.pool_shape("flat"))
    elif layout in ("head_major", "whole_pool"):
        for name in ("key_cache", "value_cache"):
            feeds[name] = np.ascontiguousarray(nhd[name].transpose(2, 0, 1, 3))
    return feeds


def function_body_runner(shape: DecodeShape, nhd: dict[str, np.ndarray]):
    """The PagedAttention function body (inlined), packed queries, plain run."""
    paged = PagedShape(shape.num_blocks, shape.block_size, shape.q_heads, shape.kv_heads, shape.head_dim)
    feeds = {
        "query": nhd["query"].reshape(shape.batch, -1),
        "key": nhd["key"],
        "value": nhd["value"],
        "key_cache": nhd["key_cache"],
        "value_cache": nhd["value_cache"],
        "cu_seqlens_q": np.arange(shape.batch + 1, dtype=np.int64),
        "seq_lens": nhd["seq_lens"],
        "block_table": nhd["block_table"],
        "slot_mapping": nhd["slot_mapping"],
    }
    return bound_runner(paged_model(paged), feeds, {}, in_place=False)


def measure(context: int, *, batches: int, with_body: bool) -> dict[str, float]:
    """Median seconds per decode step of every arrangement at one context length."""
    shape = DecodeShape(batch=1, context=context, block_size=BLOCK_SIZE, **HEADS)
    nhd = paged_step_feeds(shape, "nhd")
    step, base_out = baseline(shape, nhd)
    expected = base_out().reshape(shape.batch, -1)
    variants = {BASELINE: step}
    state = {"key_cache": "key_cache_out", "value_cache": "value_cache_out"}
    for name, (layout, in_place, pool_factor) in ARRANGEMENTS.items():
        wide = widen_pool(nhd, pool_factor) if pool_factor > 1 else nhd
        sized = dataclasses.replace(shape, pool_blocks=wide["key_cache"].shape[0])
        feeds = layout_feeds(wide, sized, layout)
        run, out = bound_runner(paged_decode_model(sized, layout), feeds, state, in_place)
        np.testing.assert_allclose(out().reshape(shape.batch, -1), expected, rtol=1e-4, atol=1e-5)
        variants[name] = run
    if with_body:
        run, out = function_body_runner(shape, nhd)
        np.testing.assert_allclose(out().reshape(shape.batch, -1), expected, rtol=1e-4, atol=1e-5)
        variants[FUNCTION_BODY] = run
    return time_interleaved(variants, batches=batches)


def bench_decode(quick: bool) -> None:
    contexts = [256, 512] if quick else [2048, 8192]
    rows, series = [], {}
    for context in contexts:
        times = measure(context, batches=3 if quick else 15, with_body=True)
        rel = ratios(times, BASELINE)
        for name, seconds in times.items():
            rows.append({"context": context, "variant": name, "median_s": seconds, "ratio": rel[name]})
            series.setdefault(name, []).append(rel[name])
        print(f"context {context}: " + ", ".join(f"{n} {r:.2f}x" for n, r in rel.items()), flush=True)
    if quick:  # a smoke run: the committed results stay as they are
        return
    setup = {
        "block_size": BLOCK_SIZE,
        "batch": 1,
        "threads": THREADS,
        "dtype": "float32",
        **HEADS,
        "baseline": BASELINE,
    }
    write_json(TOPIC, "decode", rows, setup)
    plot_decode(rows)


def plot_decode(rows: list[dict]) -> None:
    """decode.svg from the rows of decode.json (``plot_decode(load_results(...)["rows"])``
    redraws it without re-running the benchmark)."""
    contexts = list(dict.fromkeys(row["context"] for row in rows))
    series: dict[str, list[float]] = {}
    for row in rows:
        series.setdefault(row["variant"], []).append(row["ratio"])
    plot_ratios(
        TOPIC,
        "decode",
        contexts,
        series,
        xlabel="context (tokens)",
        ylabel=f"time / {BASELINE}",
        title="Paged decode from standard ops, ORT CPU, block 16",
    )


def plot_memory(results: list[simulate.PolicyResult], name: str) -> None:
    """Two bar charts: share of memory wasted, and sequences that fit the budget."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "onnx-genai-proposals"
    labels = [r.policy.replace(", ", "\n", 1) for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), dpi=100)
    left.axvspan(60, 80, color="tab:gray", alpha=0.2, label="earlier systems, per vLLM (60–80%)")
    left.axvline(4, color="tab:green", linestyle="--", label="vLLM: under 4%")
    left.barh(labels, [100 * r.waste_share for r in results], color="tab:red")
    for y, r in enumerate(results):
        left.annotate(
            f"{r.waste_share:.1%}",
            (100 * r.waste_share, y),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    left.set_xlim(0, 85)
    left.legend(loc="lower right", fontsize=8)
    left.set_xlabel("KV memory wasted (%)")
    left.invert_yaxis()
    right.barh(labels, [r.sequences_fit for r in results], color="tab:blue")
    for y, r in enumerate(results):
        right.annotate(
            str(r.sequences_fit),
            (r.sequences_fit, y),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    right.set_xlabel(f"sequences that fit in {simulate.BUDGET_SLOTS} token slots")
    right.invert_yaxis()
    right.set_yticklabels([])
    for ax in (left, right):
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("KV-cache allocation on a seeded workload (max length 2048)")
    fig.tight_layout()
    fig.savefig(results_dir(TOPIC) / f"{name}.svg", format="svg", metadata={"Date": None})
    plt.close(fig)


def bench_memory(quick: bool) -> None:
    results = simulate.simulate(seed=0)
    print(simulate.table(results), flush=True)
    if quick:
        return
    setup = {"budget_slots": simulate.BUDGET_SLOTS, "max_len": simulate.MAX_LEN, "seed": 0}
    write_json(TOPIC, "memory", simulate.rows(results), setup)
    plot_memory(results, "memory")


def main(quick: bool = False) -> None:
    bench_memory(quick)
    bench_decode(quick)


if __name__ == "__main__":
    main()
