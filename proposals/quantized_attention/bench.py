"""Benchmark: one decode step over a quantized vs a float32 KV cache on ORT CPU (``make bench``).

Batch 1, 32 query heads, 8 kv heads, head_dim 128, one new token, cache of L slots,
every cache updated in place through IOBinding (past and present share one OrtValue):

- ``fp32 Attention-24``: TensorScatter x2 + Attention-24 on a float32 cache (kv_cache);
- ``int8 Q/DQ + Attention-24``: this proposal's standard form, int8 per-channel K and V
  (onnxruntime does not fuse it: the whole cache is dequantized every step);
- ``int8 GQA PER_CHANNEL``: ``com.microsoft.GroupQueryAttention`` reading the int8 cache.

Cache bytes per token and the memory-bandwidth roofline (cache bytes / DRAM read
bandwidth measured in the same run, as the MoE benchmark measures it) are reported
with each variant's share of that limit. Results: ``proposals/quantized_attention/bench/``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from generator import bench
from generator.ort import session
from proposals.kv_cache import inplace
from proposals.kv_cache.build import cache_step_model
from proposals.quantized_attention import build, gqa
from proposals.quantized_attention.reference import CacheQuant, calibrate

TOPIC = "quantized_attention"
Q_HEADS, KV_HEADS, HEAD_DIM = 32, 8, 128
FULL_LENGTHS = (4096, 16384, 32768)
QUICK_LENGTHS = (256, 1024)
FP32, UNFUSED, GQA = "fp32 Attention-24", "int8 Q/DQ + Attention-24", "int8 GQA PER_CHANNEL"
BYTES_PER_TOKEN = {FP32: 2 * KV_HEADS * HEAD_DIM * 4, UNFUSED: 2 * KV_HEADS * HEAD_DIM, GQA: 2 * KV_HEADS * HEAD_DIM}


def _bound(sess: ort.InferenceSession, key: np.ndarray, value: np.ndarray, feeds: dict) -> Callable[[], np.ndarray]:
    """A step that updates the caches in place and returns ``y`` (bound after the presents)."""
    caches = {"past_key": ort.OrtValue.ortvalue_from_numpy(key), "past_value": ort.OrtValue.ortvalue_from_numpy(value)}
    binding = inplace.bind_in_place(sess, caches, feeds, ["y"])
    return lambda: (sess.run_with_iobinding(binding), binding.get_outputs()[2])


def decode_variants(length: int, rng: np.random.RandomState) -> dict[str, Callable[[], object]]:
    """The three decode steps over ``length`` slots (the last one being written)."""
    q = rng.randn(1, Q_HEADS, 1, HEAD_DIM).astype(np.float32)
    k, v = (rng.randn(1, KV_HEADS, 1, HEAD_DIM).astype(np.float32) for _ in range(2))
    key, value = (rng.randn(1, KV_HEADS, length, HEAD_DIM).astype(np.float32) for _ in range(2))
    quant = CacheQuant("int8", "per_channel", *calibrate(key[:, :, :64], "per_channel", "int8"))
    codes = [np.clip(np.rint(x / quant.scale), -128, 127).astype(np.int8) for x in (key, value)]
    step = {"q": q, "k": k, "v": v, "write_indices": np.array([length - 1]), "nonpad_kv_seqlen": np.array([length])}
    dims = {"q_heads": Q_HEADS, "kv_heads": KV_HEADS, "max_len": length, "head_dim": HEAD_DIM}
    fp32 = session(cache_step_model(**dims))
    unfused = session(build.quant_cache_step_model(quant, quant, **dims))
    fused = session(gqa.gqa_step_model(quant, quant, **dims))
    variants = {
        FP32: _bound(fp32, key, value, step),
        UNFUSED: _bound(unfused, codes[0].copy(), codes[1].copy(), step),
        GQA: _bound(fused, codes[0].copy(), codes[1].copy(), step),
    }
    # Same int8 cache, same numbers: the fused kernel reads what the standard form dequantizes.
    ys = {name: fn()[1].numpy() for name, fn in variants.items()}
    np.testing.assert_allclose(ys[GQA], ys[UNFUSED], rtol=1e-4, atol=1e-5)
    return variants


def measure(lengths, bandwidth_gbs: float, **timing) -> list[dict]:
    rows = []
    for length in lengths:
        times = bench.time_interleaved(decode_variants(length, np.random.RandomState(length)), **timing)
        roofline = {name: length * BYTES_PER_TOKEN[name] / (bandwidth_gbs * 1e9) for name in times}
        rows.append(
            {
                "L": length,
                "seconds": times,
                "ratios": bench.ratios(times, FP32),
                "cache_bytes_per_token": BYTES_PER_TOKEN,
                "roofline_seconds": roofline,
                "roofline_share": {name: roofline[name] / t for name, t in times.items()},
            }
        )
        print(f"L={length:6d} " + "  ".join(f"{n}: {t * 1e3:8.2f} ms" for n, t in times.items()), flush=True)
    return rows


def main(quick: bool = False) -> None:
    """Measure; ``quick`` is a seconds-long smoke run that writes nothing."""
    timing = {"batches": 3, "min_batch_s": 0.002} if quick else {"batches": 9, "min_batch_s": 0.05}
    bandwidth = bench.memory_bandwidth_gbs(32 if quick else 256)
    print(f"DRAM read bandwidth: {bandwidth:.1f} GB/s")
    print("Decode step (B=1, 32 q heads, 8 kv heads, head_dim 128, in place):")
    rows = measure(QUICK_LENGTHS if quick else FULL_LENGTHS, bandwidth, **timing)
    from proposals.quantized_attention.accuracy import checkpoints_main

    checkpoints_main(quick)  # the study on the packaged checkpoints: bench/accuracy_checkpoints.json
    if quick:
        return
    shape = {"batch": 1, "q_heads": Q_HEADS, "kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "threads": 2, **timing}
    bench.write_json(TOPIC, "decode_step", rows, {**shape, "bandwidth_gbs": bandwidth, "baseline": FP32})
    series = {name: [row["seconds"][name] * 1e3 for row in rows] for name in rows[0]["seconds"]}
    bench.plot_ratios(
        TOPIC,
        "decode_step",
        [row["L"] for row in rows],
        series,
        xlabel="cache length L (tokens)",
        ylabel="milliseconds per step (log)",
        title="Decode step over an int8 vs fp32 KV cache (ORT CPU)",
    )


if __name__ == "__main__":
    main()
