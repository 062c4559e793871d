"""Benchmark: cost of the KV-cache update per decode step on onnxruntime CPU (``make bench``).

Float32, batch 1, 8 kv heads, head_dim 128, one new token, cache length L:

- ``kv_update``: only the cache update. Concat growth (what Attention-23 does with
  past/present), TensorScatter-24 with a plain ``run()`` (copies the cache), and
  TensorScatter-24 in place through IOBinding.
- ``decode_step``: a whole attention step with 32 query heads. Attention-23 with
  past/present vs 2x TensorScatter + Attention-24 (plain run, and in place).
- ``openvino_precision``: not a timing but evidence for the page's first pitfall, which
  depends on the CPU: OpenVINO's default inference precision and its error on the top-left
  case (and two neighbours) at each precision hint, with the machine it ran on.

Variants are timed interleaved in one process (:func:`generator.bench.time_interleaved`);
the ratios are what to compare. Results: ``proposals/kv_cache/bench/*.json`` and ``*.svg``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import onnxruntime as ort

from generator import bench
from generator.ort import ERROR, session
from proposals.kv_cache import build, inplace, reference

TOPIC = "kv_cache"
KV_HEADS, Q_HEADS, HEAD_DIM = 8, 32, 128
FULL_LENGTHS = (512, 2048, 8192, 32768)
QUICK_LENGTHS = (64, 256)
UPDATE_BASELINE = "TensorScatter, IOBinding in place"
STEP_BASELINE = "TensorScatter + Attention-24, IOBinding in place"
# The plain-run variants copy the cache on purpose (they are what in place is measured
# against), so onnxruntime's TensorScatter copy warning would repeat at every call.
QUIET = {"log_severity": ERROR}


def _randn(rng: np.random.RandomState, *shape: int) -> np.ndarray:
    return rng.randn(*shape).astype(np.float32)


def update_variants(length: int, rng: np.random.RandomState) -> dict[str, Callable[[], object]]:
    """Three ways to add one token to a cache that then holds ``length`` tokens."""
    past = _randn(rng, 1, KV_HEADS, length, HEAD_DIM)
    token = _randn(rng, 1, KV_HEADS, 1, HEAD_DIM)
    write = np.array([length - 1], np.int64)

    concat = session(build.concat_cache_model(kv_heads=KV_HEADS, head_dim=HEAD_DIM))
    concat_feeds = {"past_key": past[:, :, : length - 1].copy(), "k": token}

    scatter = session(build.tensor_scatter_model(past.shape, token.shape), **QUIET)
    scatter_feeds = {"past_cache": past, "update": token, "write_indices": write}

    cache = ort.OrtValue.ortvalue_from_numpy(past.copy())
    binding = inplace.bind_in_place(
        scatter,
        {"past_cache": cache},
        {"update": token, "write_indices": write},
        pairs=(("past_cache", "present_cache"),),
    )
    return {
        "Concat (Attention-23 style)": lambda: concat.run(None, concat_feeds),
        "TensorScatter, plain run": lambda: scatter.run(None, scatter_feeds),
        "TensorScatter, IOBinding in place": lambda: scatter.run_with_iobinding(binding),
    }


def decode_variants(length: int, rng: np.random.RandomState) -> dict[str, Callable[[], object]]:
    """A decode step (one query token) over ``length`` cached tokens, three ways."""
    q = _randn(rng, 1, Q_HEADS, 1, HEAD_DIM)
    k, v = _randn(rng, 1, KV_HEADS, 1, HEAD_DIM), _randn(rng, 1, KV_HEADS, 1, HEAD_DIM)
    key, value = (
        _randn(rng, 1, KV_HEADS, length, HEAD_DIM),
        _randn(rng, 1, KV_HEADS, length, HEAD_DIM),
    )

    a23 = session(build.attention23_step_model(q_heads=Q_HEADS, kv_heads=KV_HEADS, head_dim=HEAD_DIM))
    a23_feeds = {
        "q": q,
        "k": k,
        "v": v,
        "past_key": key[:, :, : length - 1].copy(),
        "past_value": value[:, :, : length - 1].copy(),
    }

    a24 = session(
        build.cache_step_model(q_heads=Q_HEADS, kv_heads=KV_HEADS, max_len=length, head_dim=HEAD_DIM), **QUIET
    )
    step = {
        "q": q,
        "k": k,
        "v": v,
        "write_indices": np.array([length - 1], np.int64),
        "nonpad_kv_seqlen": np.array([length], np.int64),
    }
    a24_feeds = {**step, "past_key": key, "past_value": value}
    caches = {
        "past_key": ort.OrtValue.ortvalue_from_numpy(key.copy()),
        "past_value": ort.OrtValue.ortvalue_from_numpy(value.copy()),
    }
    binding = inplace.bind_in_place(a24, caches, step, ["y"])

    # Same numbers either way: Attention-23 sees the same L keys in the same order.
    y23 = a23.run(["y"], a23_feeds)[0]
    a24.run_with_iobinding(binding)
    y24 = binding.get_outputs()[2].numpy()
    np.testing.assert_allclose(y24, y23, rtol=1e-5, atol=1e-6)
    return {
        "Attention-23 past/present": lambda: a23.run(None, a23_feeds),
        "TensorScatter + Attention-24, plain run": lambda: a24.run(None, a24_feeds),
        "TensorScatter + Attention-24, IOBinding in place": lambda: a24.run_with_iobinding(binding),
    }


def measure(
    make: Callable[[int, np.random.RandomState], dict[str, Callable[[], object]]],
    lengths: Sequence[int],
    baseline: str,
    **timing: float,
) -> list[dict]:
    """One row per L: median seconds per call of each variant and ratios to ``baseline``."""
    rows = []
    for length in lengths:
        variants = make(length, np.random.RandomState(length))
        times = bench.time_interleaved(variants, **timing)
        rows.append({"L": length, "seconds": times, "ratios": bench.ratios(times, baseline)})
        print(f"L={length:6d} " + "  ".join(f"{name}: {t * 1e6:9.1f} us" for name, t in times.items()))
    return rows


def write_results(
    name: str, rows: list[dict], *, title: str, unit: float, ylabel: str, setup: Mapping[str, object] | None = None
) -> None:
    """JSON rows plus a plot of time per step against L, one line per variant."""
    bench.write_json(TOPIC, name, rows, setup or {})
    series = {variant: [row["seconds"][variant] / unit for row in rows] for variant in rows[0]["seconds"]}
    bench.plot_ratios(
        TOPIC,
        name,
        [row["L"] for row in rows],
        series,
        xlabel="cache length L (tokens)",
        ylabel=ylabel,
        title=title,
    )


# The pitfall's case and its two neighbours: (label, feed nonpad_kv_seqlen?, is_causal).
PRECISION_VARIANTS = (
    ("is_causal, no nonpad_kv_seqlen (the top-left case)", False, 1),
    ("is_causal with nonpad_kv_seqlen", True, 1),
    ("no is_causal, no nonpad_kv_seqlen", False, 0),
)

PRECISION_REPEATS = 3
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 arithmetic on x86


def openvino_precision() -> dict[str, object]:
    """OpenVINO CPU's default precision and max |Y - numpy| of each variant per precision
    hint (one value per fresh compile), on the data of the zoo case
    ``attention_causal_without_nonpad_is_top_left``."""
    import openvino

    from proposals.kv_cache.cases import attention_causal_without_nonpad_is_top_left

    (data,) = attention_causal_without_nonpad_is_top_left().datasets
    q, k, v = (data.inputs[name] for name in ("q", "k", "v"))
    core = openvino.Core()
    rows = []
    for label, nonpad, is_causal in PRECISION_VARIANTS:
        model = build.attention_model(
            q_heads=2, kv_heads=2, q_len=1, kv_len=8, head_dim=4, nonpad=nonpad, is_causal=is_causal
        )
        feeds = {"q": q, "k": k, "v": v} | ({"nonpad_kv_seqlen": np.array([8])} if nonpad else {})
        expected = reference.attention(
            q, k, v, nonpad_kv_seqlen=feeds.get("nonpad_kv_seqlen"), is_causal=bool(is_causal)
        )
        errors: dict[str, list[float]] = {}
        for hint in ("bf16", "f32"):
            errors[hint] = []
            for _ in range(PRECISION_REPEATS):  # a fresh compile each time: the garbage varies
                compiled = core.compile_model(
                    core.read_model(model.SerializeToString(), b""), "CPU", {"INFERENCE_PRECISION_HINT": hint}
                )
                errors[hint].append(float(np.abs(compiled(feeds)[compiled.output(0)] - expected).max()))
        rows.append({"variant": label, "max_abs_err": errors, "max_abs_expected": float(np.abs(expected).max())})
    return {
        "rows": rows,
        "openvino": openvino.__version__,
        "default_precision": str(core.get_property("CPU", "INFERENCE_PRECISION_HINT").to_string()),
        "capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        "cpu_flags": bench.cpu_flags(BF16_FLAGS),
    }


def main(quick: bool = False) -> None:
    """Measure both benchmarks; ``quick`` is a seconds-long smoke run that writes nothing."""
    lengths = QUICK_LENGTHS if quick else FULL_LENGTHS
    timing = {"batches": 3, "min_batch_s": 0.002} if quick else {"batches": 15, "min_batch_s": 0.02}
    print("KV update per decode step (B=1, 8 kv heads, head_dim 128, 1 token):")
    update = measure(update_variants, lengths, UPDATE_BASELINE, **timing)
    print("Decode step (32 q heads, 8 kv heads, head_dim 128, 1 token):")
    decode = measure(decode_variants, lengths, STEP_BASELINE, **timing)
    evidence = openvino_precision()
    print(f"OpenVINO CPU default precision {evidence['default_precision']}: {evidence['rows']}")
    if quick:
        return
    bench.write_json(TOPIC, "openvino_precision", evidence.pop("rows"), evidence)
    shape = {
        "batch": 1,
        "kv_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "dtype": "float32",
        "new_tokens": 1,
        "threads": 2,
        **timing,
    }
    write_results(
        "kv_update",
        update,
        title="KV-cache update per decode step (ORT CPU)",
        unit=1e-6,
        ylabel="microseconds per step (log)",
        setup={**shape, "baseline": UPDATE_BASELINE},
    )
    write_results(
        "decode_step",
        decode,
        title="Decode step: Attention-23 vs TensorScatter + Attention-24",
        unit=1e-3,
        ylabel="milliseconds per step (log)",
        setup={**shape, "q_heads": Q_HEADS, "baseline": STEP_BASELINE},
    )


if __name__ == "__main__":
    main()
