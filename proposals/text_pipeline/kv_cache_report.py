"""What each KV-cache format costs the pipeline: greedy token agreement with the float32
cache and cache memory (``python -m proposals.text_pipeline.kv_cache_report``, also run by
``make bench``). Result: ``proposals/text_pipeline/bench/kv_cache.json``.

- **Agreement**: the onnxruntime backend generates ``NEW_TOKENS`` greedy tokens for each of
  ``PROMPTS`` on the zoo's seeded decoders, once per format (``create_pipeline`` with the
  device setting ``kv_cache``; no EOS, so every run is ``NEW_TOKENS`` long). A row counts
  the positions whose token equals the float32 run's and the tokens before the first
  difference, and, where a prompt diverges, float32's gap between its top two logits at
  that step (beside the median gap over every step): a small gap is a near-tie that the
  quantization error can flip.
- **Memory**: read off the decoder each format runs (its ``past_*`` inputs' shapes and
  element types, :mod:`cache_formats`): bytes one token takes over every layer (K, V and
  any scale cache), and the bytes allocated for one sequence of the decoder's full
  context (``max_positions``; a circular cache holds its window).

Agreement is an exact count from a deterministic run (ORT CPU, the tiny decoders'
float32 kernels), so a test recomputes it and compares with the committed figures.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from generator.bench import write_json
from proposals.text_pipeline.build import spec_from_model
from proposals.text_pipeline.cache_formats import (
    FLOAT32,
    cache_bytes,
    cache_bytes_per_token,
    cache_format_names,
    with_cache_format,
)
from proposals.text_pipeline.config import GenerationInput
from proposals.text_pipeline.factory import Device, create_pipeline
from proposals.text_pipeline.families import ARCHITECTURES
from proposals.text_pipeline.folder import ModelFolder, decoder_bytes, write_folder
from proposals.text_pipeline.runners import OrtRunner

TOPIC = "text_pipeline"
NAME = "kv_cache"
NEW_TOKENS = 64
PROMPTS = (
    "The KV cache",
    "Attention reads every key",
    "A quantized cache stores codes",
    "TensorScatter writes the new rows",
)


def greedy_tokens(folder: Path, kv_cache: str) -> list[list[int]]:
    """``NEW_TOKENS`` greedy tokens per prompt from the onnxruntime backend with ``kv_cache``."""
    pipeline = create_pipeline("onnxruntime", folder, Device("CPU", {"kv_cache": kv_cache}))
    config = pipeline.get_generation_config().with_(max_new_tokens=NEW_TOKENS, eos_token_ids=frozenset())
    pipeline.set_generation_config(config)
    return [list(pipeline(GenerationInput(prompt)).token_ids) for prompt in PROMPTS]


def first_difference(row: list[int], reference: list[int]) -> int:
    """The index of the first token that differs (``len(reference)`` when none does)."""
    return next((i for i, (a, b) in enumerate(zip(row, reference, strict=True)) if a != b), len(reference))


def agreement(tokens: list[list[int]], reference: list[list[int]]) -> dict:
    """Equal positions and the identical prefix, summed over the prompts."""
    same = sum(a == b for row, ref in zip(tokens, reference, strict=True) for a, b in zip(row, ref, strict=True))
    prefix = sum(first_difference(row, ref) for row, ref in zip(tokens, reference, strict=True))
    total = sum(len(ref) for ref in reference)
    return {"tokens": total, "equal_tokens": same, "identical_prefix_tokens": prefix, "token_agreement": same / total}


def float32_margins(folder: Path, reference: list[list[int]]) -> list[np.ndarray]:
    """Per prompt, float32's gap between its top two logits at each of its greedy steps (the
    runner under the float32 pipeline, fed the float32 tokens): how near a tie each step was."""
    pipeline = create_pipeline("onnxruntime", folder)
    runner = OrtRunner(ModelFolder.read(folder).decoder, threads=1)
    margins = []
    for prompt, tokens in zip(PROMPTS, reference, strict=True):
        ids = pipeline.encode(GenerationInput(prompt))
        runner.start(1, len(ids) + len(tokens))
        steps = [runner.append([ids])[0], *(runner.append([[t]])[0] for t in tokens[:-1])]
        top2 = np.sort(np.stack(steps), axis=-1)[:, -2:]
        margins.append(top2[:, 1] - top2[:, 0])
    return margins


def near_ties(tokens: list[list[int]], reference: list[list[int]], margins: list[np.ndarray]) -> dict:
    """float32's top-two logit gap where each prompt first diverges, beside its median gap."""
    at = [
        round(float(m[first_difference(row, ref)]), 4)
        for row, ref, m in zip(tokens, reference, margins, strict=True)
        if first_difference(row, ref) < len(ref)
    ]
    return {
        "float32_margin_at_divergence": at,
        "float32_median_margin": round(float(np.median(np.concatenate(margins))), 4),
    }


def memory(decoder: onnx.ModelProto) -> dict:
    """Cache bytes per token and for one full-context sequence, from the graph's cache inputs."""
    context = spec_from_model(decoder).max_positions
    return {
        "cache_bytes_per_token": cache_bytes_per_token(decoder),
        "context": context,
        "cache_bytes_at_context": cache_bytes(decoder, context),
    }


def checkpoint_rows(names: tuple[str, ...] = ("smollm2-135m-instruct", "gemma3-270m")) -> list[dict]:
    """``--kv-cache int8`` against float32 on the packaged checkpoints' exported folders."""
    from proposals.text_pipeline.export import exported_folder

    out = []
    for name in names:
        folder = exported_folder(name)
        base = ModelFolder.read(folder).decoder  # the graph only: memory is read off its inputs
        reference = greedy_tokens(folder, FLOAT32)
        float_bytes = cache_bytes_per_token(base)
        for fmt in cache_format_names():
            tokens = reference if fmt == FLOAT32 else greedy_tokens(folder, fmt)
            mem = memory(with_cache_format(base, fmt))
            out.append(
                {
                    "model": name,
                    "kv_cache": fmt,
                    **agreement(tokens, reference),
                    **mem,
                    "bytes_ratio_to_float32": mem["cache_bytes_per_token"] / float_bytes,
                }
            )
            print(out[-1], flush=True)
    return out


def rows(archs=tuple(ARCHITECTURES), folders: dict[str, Path] | None = None) -> list[dict]:
    """One row per architecture × format (float32 first, its own reference)."""
    import tempfile

    out = []
    with tempfile.TemporaryDirectory() as scratch:
        for arch in archs:
            folder = (folders or {}).get(arch) or write_folder(arch, Path(scratch) / arch)
            base = onnx.load_from_string(decoder_bytes(arch))
            reference = greedy_tokens(folder, FLOAT32)
            margins = float32_margins(folder, reference)
            float_bytes = cache_bytes_per_token(base)
            for name in cache_format_names():
                decoder = with_cache_format(base, name)
                tokens = reference if name == FLOAT32 else greedy_tokens(folder, name)
                mem = memory(decoder)
                out.append(
                    {
                        "arch": arch,
                        "kv_cache": name,
                        **agreement(tokens, reference),
                        **near_ties(tokens, reference, margins),
                        **mem,
                        "bytes_ratio_to_float32": mem["cache_bytes_per_token"] / float_bytes,
                    }
                )
    return out


def main(quick: bool = False) -> Path | None:
    """Measure every format on every architecture; ``quick`` checks one and writes nothing."""
    result = rows(("llama",) if quick else tuple(ARCHITECTURES))
    for r in result:
        print(
            f"{r['arch']:8s} {r['kv_cache']:8s} agreement {r['equal_tokens']}/{r['tokens']} "
            f"(prefix {r['identical_prefix_tokens']}), {r['cache_bytes_per_token']:g} B/token, "
            f"{r['cache_bytes_at_context']} B at {r['context']} tokens"
        )
    if quick:
        return None
    setup = {"backend": "onnxruntime", "new_tokens": NEW_TOKENS, "prompts": list(PROMPTS), "decoding": "greedy"}
    return write_json(TOPIC, NAME, result, setup)


if __name__ == "__main__":
    import sys

    if "--checkpoints" in sys.argv:
        setup = {"backend": "onnxruntime", "new_tokens": NEW_TOKENS, "prompts": list(PROMPTS), "decoding": "greedy"}
        print(write_json(TOPIC, "kv_cache_checkpoints", checkpoint_rows(), setup))
    else:
        print(main())
