"""Benchmark: cost of the KV-cache update per decode step on onnxruntime CPU (``make bench``).

Float32, batch 1, 8 kv heads, head_dim 128, one new token, cache length L:

- ``kv_update``: only the cache update. Concat growth (what Attention-23 does with
  past/present), TensorScatter-24 with a plain ``run()`` (copies the cache), and
  TensorScatter-24 in place through IOBinding.
- ``decode_step``: a whole attention step with 32 query heads. Attention-23 with
  past/present vs 2x TensorScatter + Attention-24 (plain run, and in place).
- ``real_shapes``: one attention layer of the real checkpoints (SmolLM2-135M: 9 query / 3
  kv heads of 64; Gemma 3 270M's global layer: 4 / 1 of 256) at 4k, 16k and 32k tokens, and
  with 64 tokens held in 128 and 4,096 slots: the standard step in place and copied, and
  onnxruntime's GroupQueryAttention on the identical cache (the fused form of
  :mod:`proposals.kv_cache.fusion`), with the share of the machine's read bandwidth.
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
from proposals.kv_cache import build, fusion, inplace, reference

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


# (query heads, kv heads, head size) of one attention layer of each packaged checkpoint.
REAL_LAYERS = {"SmolLM2-135M": (9, 3, 64), "Gemma 3 270M, global layer": (4, 1, 256)}
# (capacity, tokens held): full buffers at 4k/16k/32k, then 64 tokens in a small and a large buffer.
REAL_CELLS = ((4096, 4096), (16384, 16384), (32768, 32768), (128, 64), (4096, 64))
QUICK_REAL_CELLS = ((256, 256), (128, 64), (1024, 64))
A24_IN_PLACE, A24_COPY, GQA_IN_PLACE = "Attention-24, in place", "Attention-24, plain run", "GQA, in place"


def real_step_variants(layer: tuple[int, int, int], capacity: int, held: int) -> dict[str, Callable[[], object]]:
    """One decode step of a real layer shape with ``held`` tokens in a ``capacity``-slot cache:
    the standard step bound in place and copied, and its GQA fusion bound in place, all on
    the same cache contents (checked to agree)."""
    q_heads, kv_heads, head_dim = layer
    rng = np.random.RandomState(capacity + held)
    cache = np.zeros((2, 1, kv_heads, capacity, head_dim), np.float32)
    cache[:, :, :, : held - 1] = _randn(rng, 2, 1, kv_heads, held - 1, head_dim)
    step = {
        "q": _randn(rng, 1, q_heads, 1, head_dim),
        "k": _randn(rng, 1, kv_heads, 1, head_dim),
        "v": _randn(rng, 1, kv_heads, 1, head_dim),
        "write_indices": np.array([held - 1], np.int64),
        "nonpad_kv_seqlen": np.array([held], np.int64),
    }
    model = build.cache_step_model(q_heads=q_heads, kv_heads=kv_heads, max_len=capacity, head_dim=head_dim)
    standard, fused = session(model, **QUIET), session(fusion.fuse_to_gqa(model), **QUIET)

    def bound(sess: ort.InferenceSession) -> ort.IOBinding:
        caches = {
            name: ort.OrtValue.ortvalue_from_numpy(c.copy())
            for name, c in zip(("past_key", "past_value"), cache, strict=True)
        }
        binding = inplace.bind_in_place(sess, caches, step, ["y"])
        binding.values = caches  # kept alive with the binding
        return binding

    a24, gqa = bound(standard), bound(fused)
    standard.run_with_iobinding(a24)
    fused.run_with_iobinding(gqa)
    np.testing.assert_allclose(gqa.get_outputs()[2].numpy(), a24.get_outputs()[2].numpy(), rtol=1e-4, atol=1e-5)
    plain = {**step, "past_key": cache[0], "past_value": cache[1]}
    return {
        A24_IN_PLACE: lambda: standard.run_with_iobinding(a24),
        A24_COPY: lambda: standard.run(None, plain),
        GQA_IN_PLACE: lambda: fused.run_with_iobinding(gqa),
    }


def real_shapes(quick: bool = False) -> list[dict]:
    """``real_shapes`` rows: median seconds per step, the K/V bytes the step must read and
    the share of the measured read bandwidth each variant reaches."""
    cells = QUICK_REAL_CELLS if quick else REAL_CELLS
    timing = {"batches": 3, "min_batch_s": 0.002} if quick else {"batches": 9, "min_batch_s": 0.02}
    bandwidth = bench.memory_bandwidth_gbs()
    rows = []
    for name, layer in REAL_LAYERS.items():
        for capacity, held in cells:
            times = bench.time_interleaved(real_step_variants(layer, capacity, held), **timing)
            kv_bytes = 2 * held * layer[1] * layer[2] * 4
            rows.append(
                {
                    "layer": name,
                    "shape": dict(zip(("q_heads", "kv_heads", "head_dim"), layer, strict=True)),
                    "capacity": capacity,
                    "held": held,
                    "seconds": times,
                    "kv_bytes": kv_bytes,
                    "roofline_share": {v: kv_bytes / t / (bandwidth * 1e9) for v, t in times.items()},
                    "bandwidth_gbs": bandwidth,
                }
            )
            print(f"{name} L={capacity} held={held}: " + "  ".join(f"{v} {t * 1e6:.0f} us" for v, t in times.items()))
    if not quick:
        bench.write_json(
            TOPIC, "real_shapes", rows, {"batch": 1, "new_tokens": 1, "dtype": "float32", "threads": 2, **timing}
        )
    return rows


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
    real_shapes(quick)
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
    import sys

    if "--real-shapes" in sys.argv:  # only the real-layer bench (the others take long)
        real_shapes(quick="--quick" in sys.argv)
    else:
        main(quick="--quick" in sys.argv)
