"""Zoo cases: the pipeline's opset-24 decoders, expected values from transformers.

Each case is a tiny random-weight transformers model converted by ``build_decoder``,
run as a prefill of a right-padded ragged batch (real lengths 4 and 6) and one decode
step that writes each sample at its own ``write_indices`` (4 and 6): sample 0's new
token overwrites its first padding slot. The expected logits and caches come from the
transformers module run sequence by sequence on a float64 copy (cast once to float32,
so no CPU kernel shows in the bytes), never from onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx

from generator.registry import Case, DataSet, case
from generator.torch_reference import float64_copy
from proposals.text_pipeline.build import spec_from_model
from proposals.text_pipeline.families import tiny_model
from proposals.text_pipeline.folder import decoder_bytes, extra_files, reference_step
from proposals.text_pipeline.tokenizer import PAD_TOKEN, load_tokenizer

PROMPTS = ("The cache is", "TensorScatter writes keys into the buffer")
LINEAR_CACHE_LEN = 12


# --8<-- [start:case]
def decoder_case(arch: str) -> Case:
    """Prefill (ragged, right-padded) + one decode step, expected from transformers."""
    model = float64_copy(tiny_model(arch))  # the reference runs in float64
    decoder = onnx.load_from_string(decoder_bytes(arch))
    spec = spec_from_model(decoder)
    tokenizer = load_tokenizer()
    rows = [tokenizer.encode(p).ids[:n] for p, n in zip(PROMPTS, (4, 6), strict=True)]
    width = max(map(len, rows))
    padded = [r + [tokenizer.token_to_id(PAD_TOKEN)] * (width - len(r)) for r in rows]
    shape = spec.cache_shape(len(rows), LINEAR_CACHE_LEN)

    # prefill: the graph computes every column, padding included, so the reference does too
    prefill = [reference_step(model, r) for r in padded]
    past = {f"past_{k}_{i}": np.zeros(shape, np.float32) for i in range(spec.num_layers) for k in ("key", "value")}
    present = {name.replace("past", "present"): cache.copy() for name, cache in past.items()}
    for b, (_, _, layers) in enumerate(prefill):
        for i, (k, v) in enumerate(layers):
            present[f"present_key_{i}"][b, :, :width] = k
            present[f"present_value_{i}"][b, :, :width] = v
    first = DataSet(
        inputs={
            "input_ids": np.array(padded, np.int64),
            "write_indices": np.zeros(len(rows), np.int64),
            **past,
        },
        outputs={"logits": np.stack([logits for logits, _, _ in prefill]).astype(np.float32), **present},
    )

    # decode: each sample appends its greedy token at its own length; the cache of the real
    # tokens only (no padding) is the reference's context
    lengths = [len(r) for r in rows]
    nxt = [int(prefill[b][0][n - 1].argmax()) for b, n in enumerate(lengths)]
    decode_past = {name.replace("present", "past"): c for name, c in present.items()}
    decode_present = {name: c.copy() for name, c in present.items()}
    logits = []
    for b, row in enumerate(rows):
        _, context, _ = reference_step(model, row)
        step_logits, _, layers = reference_step(model, [nxt[b]], context)
        logits.append(step_logits)
        for i, (k, v) in enumerate(layers):
            decode_present[f"present_key_{i}"][b, :, lengths[b]] = k[:, -1]
            decode_present[f"present_value_{i}"][b, :, lengths[b]] = v[:, -1]
    second = DataSet(
        inputs={
            "input_ids": np.array([[t] for t in nxt], np.int64),
            "write_indices": np.array(lengths, np.int64),
            **decode_past,
        },
        outputs={"logits": np.stack(logits).astype(np.float32), **decode_present},
    )
    return Case(decoder, [first, second], rtol=1e-4, atol=1e-5, files=extra_files(arch))


# --8<-- [end:case]


@case
def llama_decoder() -> Case:
    """Tiny Llama decoder (GQA 4/2, linear TensorScatter cache), tokenizer and pipeline config."""
    return decoder_case("llama")


@case
def qwen2_decoder() -> Case:
    """Tiny Qwen2 decoder (q/k/v biases, linear cache), tokenizer and pipeline config."""
    return decoder_case("qwen2")


@case
def qwen3_decoder() -> Case:
    """Tiny Qwen3 decoder (per-head q/k RMSNorm, linear cache), tokenizer and pipeline config."""
    return decoder_case("qwen3")


@case
def mistral_decoder() -> Case:
    """Tiny Mistral decoder (sliding window 16: circular cache), tokenizer and config."""
    return decoder_case("mistral")


@case
def qwen3_moe_decoder() -> Case:
    """Tiny Qwen3-MoE decoder (every MLP the MoE function op: 8 experts, top 2), tokenizer and config."""
    return decoder_case("qwen3_moe")
