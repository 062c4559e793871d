"""The standard cache step at kernel speed on the packaged checkpoints (``make bench``).

:mod:`proposals.kv_cache.fusion` rewrites each layer's TensorScatter x2 + Attention-24 into
``com.microsoft.GroupQueryAttention`` over the same buffers. Here, on SmolLM2-135M-Instruct
and Gemma 3 270M: which layers fuse (and why the others do not), whether greedy tokens stay
identical to the standard graph, and decode steps per second with 64 tokens held in 128 and
4,096 slots, fused and unfused, beside mobius-onnx's own GQA graph and its static-cache graph.
Writes ``bench/gqa_fusion.json``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import onnx

from generator.bench import time_interleaved, write_json
from proposals.kv_cache.fusion import fuse_to_gqa, fusion_report
from proposals.text_pipeline.mobius_forms import (
    PROMPTS,
    MobiusGqaRunner,
    MobiusStaticRunner,
    build_mobius,
    greedy,
    ort_session,
)
from proposals.text_pipeline.runners import OrtRunner

TOPIC = "text_pipeline"
MODELS = ("smollm2-135m-instruct", "gemma3-270m")
HELD, SMALL, LARGE = 64, 128, 4096  # tokens held; buffer capacities


def _folder(name: str):
    from proposals.text_pipeline.export import exported_folder
    from proposals.text_pipeline.folder import ModelFolder

    return ModelFolder.read(exported_folder(name))


def fusion_evidence(name: str, new_tokens: int) -> tuple[dict, onnx.ModelProto, onnx.ModelProto]:
    """Hit rate, miss reasons (counted) and greedy tokens of the fused graph against the standard one."""
    from proposals.text_pipeline.tokenizer import load_tokenizer

    folder = _folder(name)
    report = fusion_report(folder.decoder)
    fused = fuse_to_gqa(folder.decoder)
    tokenizer = load_tokenizer(folder.tokenizer_json)
    weights = folder.external_data  # the export keeps its weights in model.onnx.data; the fusion keeps the references
    standard_runner = OrtRunner(folder.decoder, external_data=weights)
    fused_runner = OrtRunner(fused, external_data=weights)
    equal = []
    for text in PROMPTS:
        prompt = tokenizer.encode(text).ids
        a, b = greedy(standard_runner, prompt, new_tokens), greedy(fused_runner, prompt, new_tokens)
        equal.append(sum(x == y for x, y in zip(a, b, strict=True)))
    row = {
        "model": name,
        "attention_layers": report.attention_nodes,
        "fused": report.fused,
        "hit_rate": report.hit_rate,
        "misses": dict(Counter(report.misses.values())),
        "tokens_equal": equal,
        "new_tokens": new_tokens,
    }
    return row, folder, fused


def _ort_step(runner: OrtRunner | MobiusStaticRunner, prompt: list[int], capacity: int) -> Callable[[], object]:
    """One decode step with ``len(prompt)`` tokens held (the same slot is rewritten each call)."""
    runner.start(1, capacity)
    runner.append([prompt])

    def step() -> None:
        runner.lengths = [len(prompt)]
        runner.append([[7]])

    return step


def _gqa_step(runner: MobiusGqaRunner, prompt: list[int]) -> Callable[[], object]:
    runner.start(1, len(prompt) + 1)
    runner.append([prompt])
    held = dict(runner.caches)

    def step() -> None:
        runner.caches, runner.lengths = dict(held), [len(prompt)]
        runner.append([[7]])

    return step


def decode_rates(folder, fused: onnx.ModelProto, gguf, *, quick: bool) -> dict[str, float]:
    """Decode steps per second of SmolLM2 with ``HELD`` tokens in the cache, every form side by side."""
    prompt = [(13 * i + 5) % 500 + 2 for i in range(HELD)]
    weights = folder.external_data
    mobius_gqa = MobiusGqaRunner(ort_session(build_mobius(gguf, "gqa")))
    mobius_static = MobiusStaticRunner(ort_session(build_mobius(gguf, "static", max_seq_len=SMALL)), inplace=True)
    variants = {
        f"standard, {SMALL} slots": _ort_step(OrtRunner(folder.decoder, external_data=weights), prompt, SMALL),
        f"standard, {LARGE} slots": _ort_step(OrtRunner(folder.decoder, external_data=weights), prompt, LARGE),
        f"fused GQA, {SMALL} slots": _ort_step(OrtRunner(fused, external_data=weights), prompt, SMALL),
        f"fused GQA, {LARGE} slots": _ort_step(OrtRunner(fused, external_data=weights), prompt, LARGE),
        "mobius GQA (growing cache)": _gqa_step(mobius_gqa, prompt),
        f"mobius static, {SMALL} slots, in place": _ort_step(mobius_static, prompt, SMALL),
    }
    timing = {"batches": 3, "min_batch_s": 0.05} if quick else {"batches": 9, "min_batch_s": 0.3}
    return {name: 1.0 / t for name, t in time_interleaved(variants, **timing).items()}


def main(quick: bool = False) -> None:
    import os

    from proposals.text_pipeline.checkpoints import checkpoint_file

    new_tokens = 4 if quick else 16
    load = [os.getloadavg()[0]]  # recorded: the cores are shared
    rows, decoders = [], {}
    for name in MODELS:
        row, folder, fused = fusion_evidence(name, new_tokens)
        rows.append(row)
        decoders[name] = (folder, fused)
        print(row)
    folder, fused = decoders[MODELS[0]]
    rates = decode_rates(folder, fused, checkpoint_file(MODELS[0]), quick=quick)
    for name, rate in rates.items():
        print(f"{name}: {rate:.1f} steps/s")
    if not quick:
        load.append(os.getloadavg()[0])
        setup = {"decode_model": MODELS[0], "held": HELD, "capacities": [SMALL, LARGE], "threads": 2, "batch": 1}
        setup["load_average"] = load
        write_json(TOPIC, "gqa_fusion", rows, {**setup, "decode_steps_per_s": rates})


if __name__ == "__main__":  # pragma: no cover
    import sys

    main(quick="--quick" in sys.argv)
