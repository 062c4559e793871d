"""Zoo cases: the pipeline's opset-24 decoders, expected values from transformers.

Each case is a tiny random-weight transformers model converted by ``build_decoder``,
run as a prefill of a right-padded ragged batch (real lengths 4 and 6) and one decode
step that writes each sample at its own ``write_indices`` (4 and 6): sample 0's new
token overwrites its first padding slot. A hybrid decoder's recurrent states would take in
the padding, so its prefill runs one sequence per run, as the runner does. The expected
logits and caches come from the
transformers module run sequence by sequence on a float64 copy (cast once to float32,
so no CPU kernel shows in the bytes), never from onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx

from generator.registry import Case, DataSet, case
from generator.torch_reference import float64_copy
from proposals.text_pipeline.build import spec_from_model
from proposals.text_pipeline.cache_formats import cache_buffers
from proposals.text_pipeline.families import tiny_model
from proposals.text_pipeline.folder import decoder_bytes, extra_files, reference_states, reference_step
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

    # prefill: the graph computes every column, padding included, so the reference does too
    prefill = [reference_step(model, r) for r in padded]
    past = {
        f"past_{k}_{i}": np.zeros(spec.cache_shape(len(rows), LINEAR_CACHE_LEN, i), np.float32)
        for i in range(spec.num_layers)
        for k in ("key", "value")
    }
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
def phi3_partial_decoder() -> Case:
    """Tiny Phi-3 decoder rotating 12 of each head's 16 features (RotaryEmbedding rotary_embedding_dim)."""
    return decoder_case("phi3_partial")


@case
def olmo2_decoder() -> Case:
    """Tiny OLMo-2 decoder (q/k RMSNorm over the whole projection, norms after each block)."""
    return decoder_case("olmo2")


@case
def smollm3_decoder() -> Case:
    """Tiny SmolLM3 decoder (layer 1 without RoPE: its keys enter the cache unrotated)."""
    return decoder_case("smollm3")


@case
def qwen3_moe_decoder() -> Case:
    """Tiny Qwen3-MoE decoder (every MLP the MoE function op: 8 experts, top 2), tokenizer and config."""
    return decoder_case("qwen3_moe")


@case
def gemma2_decoder() -> Case:
    """Tiny Gemma 2 decoder (circular cache on the sliding layer, linear on the full one; softcaps)."""
    return decoder_case("gemma2")


@case
def gemma3_decoder() -> Case:
    """Tiny Gemma 3 decoder (mixed circular/linear caches, q/k norms, local RoPE base on sliding layers)."""
    return decoder_case("gemma3")


# --8<-- [start:hybrid_case]
def hybrid_decoder_case(arch: str) -> Case:
    """A ragged batch as the runner feeds a hybrid: each prompt prefilled alone (batch 1, so no
    padding enters a conv or recurrent state), then one decode step of the whole batch on the
    caches and states stacked, each sample at its own ``write_indices``. Expected from transformers."""
    model = float64_copy(tiny_model(arch))  # the reference runs in float64
    decoder = onnx.load_from_string(decoder_bytes(arch))
    tokenizer = load_tokenizer()
    rows = [tokenizer.encode(p).ids[:n] for p, n in zip(PROMPTS, (4, 6), strict=True)]
    empty = {b.name: np.zeros(b.shape(1, LINEAR_CACHE_LEN), np.float32) for b in cache_buffers(decoder)}

    def filled(states: dict[str, np.ndarray], length: int) -> dict[str, np.ndarray]:
        """One sample's buffers after ``length`` tokens: K/V rows ``[0, length)``, states whole."""
        buffers = {name: buffer.copy() for name, buffer in empty.items()}
        for name, value in states.items():
            target = buffers[name][0]
            if name.startswith(("key_", "value_")):
                target[:, :length] = value
            else:
                target[...] = value
        return buffers

    datasets, prefilled, contexts, nxt = [], [], [], []
    for row in rows:
        logits, context, states = reference_states(model, row)
        present = filled(states, len(row))
        datasets.append(
            DataSet(
                inputs={"input_ids": np.array([row], np.int64), "write_indices": np.zeros(1, np.int64)}
                | {f"past_{n}": b for n, b in empty.items()},
                outputs={"logits": logits[None].astype(np.float32)} | {f"present_{n}": b for n, b in present.items()},
            )
        )
        prefilled.append(present)
        contexts.append(context)
        nxt.append(int(logits[-1].argmax()))

    steps = [reference_states(model, [t], c) for t, c in zip(nxt, contexts, strict=True)]
    decoded = [filled(states, len(row) + 1) for (_, _, states), row in zip(steps, rows, strict=True)]
    datasets.append(
        DataSet(
            inputs={
                "input_ids": np.array([[t] for t in nxt], np.int64),
                "write_indices": np.array([len(r) for r in rows], np.int64),
            }
            | {f"past_{n}": np.concatenate([p[n] for p in prefilled]) for n in empty},
            outputs={"logits": np.stack([s[0] for s in steps]).astype(np.float32)}
            | {f"present_{n}": np.concatenate([d[n] for d in decoded]) for n in empty},
        )
    )
    return Case(decoder, datasets, rtol=1e-4, atol=1e-5, files=extra_files(arch))


# --8<-- [end:hybrid_case]


@case
def qwen3_5_decoder() -> Case:
    """Tiny Qwen3.5 hybrid decoder: gated-delta layers 0 and 2 (LinearAttention-27, conv and
    recurrent states carried), gated attention on layer 1 (linear cache); ragged prefill, decode."""
    return hybrid_decoder_case("qwen3_5")
