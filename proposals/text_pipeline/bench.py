"""ORT CPU: time to first token and decode speed, in-place cache vs copying cache.

The in-place runner binds one buffer per cache tensor as both ``past_*`` and ``present_*``
(IOBinding), so TensorScatter writes the new token and nothing else moves. The copying
runner uses a plain ``session.run``: ORT allocates every ``present_*`` and copies the whole
past into it before the scatter, so each decode step moves the full static cache.
Both run the same decoder (a Llama-shaped model, larger than the zoo's so compute is not
negligible), side by side in one process.
"""

from __future__ import annotations

from generator.bench import plot_ratios, time_interleaved, write_json
from proposals.text_pipeline import bench_serving, kv_cache_report, real_models, throughput
from proposals.text_pipeline.build import build_decoder
from proposals.text_pipeline.families import tiny_model
from proposals.text_pipeline.runners import OrtRunner

TOPIC = "text_pipeline"
BENCH_MODEL = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 4160,
}


def _runners(decoder) -> dict[str, OrtRunner]:
    return {"in-place": OrtRunner(decoder), "copying": OrtRunner(decoder, inplace=False)}


def _prefill(runner: OrtRunner, prompt: list[int]):
    def run() -> None:
        runner.start(1, len(prompt) + 1)
        runner.append([prompt])  # logits of the first new token

    return run


def _decode_step(runner: OrtRunner, context: int):
    """One decode step at a fixed context length (the same slot is rewritten each call)."""
    runner.start(1, context + 1)

    def run() -> None:
        runner.lengths = [context]
        runner.append([[7]])

    return run


def measure(context: int, decoder, *, batches: int, min_batch_s: float) -> dict:
    prompt = [(13 * i + 5) % 500 + 2 for i in range(context)]
    ttft = time_interleaved(
        {name: _prefill(r, prompt) for name, r in _runners(decoder).items()},
        batches=batches,
        min_batch_s=min_batch_s,
    )
    step = time_interleaved(
        {name: _decode_step(r, context) for name, r in _runners(decoder).items()},
        batches=batches,
        min_batch_s=min_batch_s,
    )
    return {
        "context": context,
        "ttft_s": ttft,
        "decode_tokens_per_s": {name: 1.0 / t for name, t in step.items()},
        "ttft_ratio_copying_over_inplace": ttft["copying"] / ttft["in-place"],
        "decode_speedup_inplace_over_copying": step["copying"] / step["in-place"],
        "cache_bytes_per_sequence": 4
        * 2
        * 2
        * BENCH_MODEL["num_key_value_heads"]
        * (context + 1)
        * BENCH_MODEL["head_dim"],  # float32, K and V, 2 layers
    }


def main(quick: bool = False) -> None:
    cache_bench(quick)
    throughput.main(quick)  # every engine side by side on a larger model
    bench_serving.main(quick)  # the paged serving loop (bench/serving.json)
    kv_cache_report.main(quick)  # agreement and memory of each KV-cache format: bench/kv_cache.json
    checkpoints(quick)  # the packaged checkpoints (SmolLM2, Gemma 3): see checkpoints()


def checkpoints(quick: bool) -> None:
    """Every real-checkpoint bench: mobius-onnx's static graph in place (mobius_inplace.json), the
    GQA fusion (gqa_fusion.json), every engine side by side (throughput_checkpoints.json), and,
    in a full run, why transformers is slow here, --kv-cache int8 and paged serving on SmolLM2."""
    from proposals.text_pipeline import fused_decode, mobius_forms, real_throughput

    mobius_forms.main(quick)
    fused_decode.main(quick)
    real_throughput.main(quick)
    if quick:
        return
    from generator.bench import write_json

    profile = real_throughput.decode_op_profile()
    write_json(
        TOPIC,
        "throughput_checkpoints_ort_ops",
        profile,
        {"model": real_throughput.MODELS[0], "contexts": list(real_throughput.PROFILE_CONTEXTS), "steps": 16},
    )
    real_throughput.write_decode_gap()  # the 4096 x 1 cell's gap to mobius's static graph, remeasured
    real_throughput.write_threading()  # what the 2-thread pool's sleeping costs a decode step (and node counts)
    diagnosis = real_throughput.transformers_diagnosis()
    write_json(TOPIC, "transformers_diagnosis", diagnosis, {"model": real_throughput.MODELS[0], "held": 64})
    setup = {"model": real_throughput.MODELS[0], "context": 128, "steps": 32, "threads": real_throughput.THREADS}
    write_json(TOPIC, "llama_cpp_diagnosis", real_throughput.llama_cpp_diagnosis(), setup)
    setup = {
        "backend": "onnxruntime",
        "new_tokens": kv_cache_report.NEW_TOKENS,
        "prompts": list(kv_cache_report.PROMPTS),
    }
    write_json(TOPIC, "kv_cache_checkpoints", kv_cache_report.checkpoint_rows(), {**setup, "decoding": "greedy"})
    bench_serving.checkpoint_main()
    if not quick:  # every backend on the packaged checkpoints: bench/real_agreement.json
        real_models.write_agreement()


def cache_bench(quick: bool) -> None:
    contexts = [64, 256] if quick else [512, 4096]
    decoder = build_decoder(tiny_model("llama", **BENCH_MODEL))
    rows = [measure(c, decoder, batches=3 if quick else 9, min_batch_s=0.01 if quick else 0.05) for c in contexts]
    if not quick:  # a quick run only shows that the bench works; it writes nothing
        write_json(TOPIC, "cache", rows, {"model": BENCH_MODEL, "threads": 2})
        plot_ratios(
            TOPIC,
            "cache",
            contexts,
            {
                "decode tokens/s: in-place / copying": [r["decode_speedup_inplace_over_copying"] for r in rows],
                "time to first token: copying / in-place": [r["ttft_ratio_copying_over_inplace"] for r in rows],
            },
            xlabel="context length (tokens)",
            ylabel="ratio (>1: in-place is better)",
            title="ORT CPU, TensorScatter cache bound in place vs copied each run",
            logy=False,
        )
    if not quick:  # where an in-place decode step goes on this model (see the page)
        ops = throughput.ort_op_profile(4096, 16, model=BENCH_MODEL)
        write_json(TOPIC, "cache_ort_ops", ops, {"model": BENCH_MODEL, "context": 4096, "batch": 1, "decode_steps": 16})
    for r in rows:
        print(
            f"context {r['context']}: decode {r['decode_tokens_per_s']['in-place']:.0f} vs "
            f"{r['decode_tokens_per_s']['copying']:.0f} tok/s "
            f"(x{r['decode_speedup_inplace_over_copying']:.2f}); "
            f"TTFT {r['ttft_s']['in-place'] * 1e3:.1f} vs {r['ttft_s']['copying'] * 1e3:.1f} ms"
        )


if __name__ == "__main__":  # pragma: no cover
    import sys

    main(quick="--quick" in sys.argv)
