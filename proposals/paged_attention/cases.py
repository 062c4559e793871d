"""Zoo cases: paged attention from standard ops (and as the PagedAttention function op).

Every expected output comes from ``reference.paged_attention`` (numpy, loops over
sequences and block-table rows), never from a runtime.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from generator.onnx_build import seeded
from generator.registry import Case, DataSet, case
from proposals.paged_attention.blocks import BlockAllocator, StepInputs, plan_step
from proposals.paged_attention.build import PagedShape, paged_model
from proposals.paged_attention.reference import paged_attention, write_slots
from proposals.paged_attention.rewrite import to_paged


def step_dataset(
    shape: PagedShape,
    step: StepInputs,
    key_cache: np.ndarray,
    value_cache: np.ndarray,
    rng: np.random.RandomState,
) -> DataSet:
    """Random q/k/v for the step's tokens, expected outputs from the numpy reference."""
    tokens = len(step.slot_mapping)
    inputs = {
        "query": rng.randn(tokens, shape.q_heads * shape.head_dim).astype(np.float32),
        "key": rng.randn(tokens, shape.kv_heads * shape.head_dim).astype(np.float32),
        "value": rng.randn(tokens, shape.kv_heads * shape.head_dim).astype(np.float32),
        "key_cache": key_cache,
        "value_cache": value_cache,
        **step.as_inputs(),
    }
    expected = paged_attention(**inputs)
    outputs = {
        "output": expected.y,
        "key_cache_out": expected.key_cache,
        "value_cache_out": expected.value_cache,
    }
    return DataSet(inputs, outputs)


def chained(shape: PagedShape, steps: Sequence[StepInputs], seed: int) -> list[DataSet]:
    """Data sets for consecutive steps: each step's input pools are the last step's outputs.

    The pools start as noise, so a read that escapes its sequence's blocks shows up.
    """
    rng = seeded(seed)
    key_cache = rng.randn(*shape.cache_shape).astype(np.float32)
    value_cache = rng.randn(*shape.cache_shape).astype(np.float32)
    datasets = []
    for step in steps:
        data = step_dataset(shape, step, key_cache, value_cache, rng)
        key_cache, value_cache = data.outputs["key_cache_out"], data.outputs["value_cache_out"]
        datasets.append(data)
    return datasets


@case
def paged_decode():
    """Decode: 3 sequences (past 5, 9, 2) append one token each to scattered 4-token blocks."""
    shape = PagedShape(num_blocks=12, block_size=4, q_heads=2, kv_heads=2, head_dim=8)
    pool = BlockAllocator(shape.num_blocks, shape.block_size, seed=1)
    past = [5, 9, 2]
    blocks = [pool.reserve(seq, n + 1) for seq, n in enumerate(past)]
    step = plan_step(blocks, past, [1, 1, 1], shape.block_size, max_blocks=3)
    return Case(paged_model(shape), chained(shape, [step], seed=1))


@case
def paged_chunked_prefill():
    """Chunked prefill: an 11-token prompt written as chunks of 4, 4 and 3 (3 data sets)."""
    shape = PagedShape(num_blocks=8, block_size=4, q_heads=2, kv_heads=2, head_dim=8)
    pool = BlockAllocator(shape.num_blocks, shape.block_size, seed=2)
    steps = []
    for past, chunk in [(0, 4), (4, 4), (8, 3)]:
        blocks = pool.reserve(0, past + chunk)
        steps.append(plan_step([blocks], [past], [chunk], shape.block_size, max_blocks=3))
    return Case(paged_model(shape), chained(shape, steps, seed=2))


@case
def paged_mixed_batch():
    """Mixed batch: a decode token (past 7), a 4-token chunk (past 4) and a fresh 3-token prompt."""
    shape = PagedShape(num_blocks=12, block_size=4, q_heads=2, kv_heads=2, head_dim=8)
    pool = BlockAllocator(shape.num_blocks, shape.block_size, seed=3)
    past, new = [7, 4, 0], [1, 4, 3]
    blocks = [pool.reserve(seq, p + n) for seq, (p, n) in enumerate(zip(past, new, strict=True))]
    step = plan_step(blocks, past, new, shape.block_size, max_blocks=3)
    return Case(paged_model(shape), chained(shape, [step], seed=3))


@case
def paged_gqa():
    """Grouped-query attention: 8 query heads over 2 KV heads, decode token plus a 3-token chunk."""
    shape = PagedShape(num_blocks=10, block_size=4, q_heads=8, kv_heads=2, head_dim=8)
    pool = BlockAllocator(shape.num_blocks, shape.block_size, seed=4)
    past, new = [10, 5], [1, 3]
    blocks = [pool.reserve(seq, p + n) for seq, (p, n) in enumerate(zip(past, new, strict=True))]
    step = plan_step(blocks, past, new, shape.block_size, max_blocks=4)
    return Case(paged_model(shape), chained(shape, [step], seed=4))


@case
def paged_shared_prefix():
    """Prefix sharing: B reuses A's two full prompt blocks (same ids in both table rows)."""
    shape = PagedShape(num_blocks=8, block_size=4, q_heads=4, kv_heads=2, head_dim=8)
    pool = BlockAllocator(shape.num_blocks, shape.block_size, seed=5)
    prompt = pool.reserve(0, 8)  # step 1: A prefills an 8-token prompt (2 full blocks)
    prefill = plan_step([prompt], [0], [8], shape.block_size, max_blocks=3)
    pool.share(1, prompt)  # B hits the prefix cache for those 8 tokens
    a, b = pool.reserve(0, 9), pool.reserve(1, 11)
    # step 2: A decodes 1 token, B prefills its 3 own tokens; both read the shared blocks
    both = plan_step([a, b], [8, 8], [1, 3], shape.block_size, max_blocks=3)
    return Case(paged_model(shape), chained(shape, [prefill, both], seed=5))


@case
def paged_function_op():
    """PagedAttention function op (model-local function) on a GQA mixed batch."""
    shape = PagedShape(num_blocks=10, block_size=4, q_heads=4, kv_heads=2, head_dim=8)
    pool = BlockAllocator(shape.num_blocks, shape.block_size, seed=6)
    past, new = [6, 0, 9], [1, 5, 1]
    blocks = [pool.reserve(seq, p + n) for seq, (p, n) in enumerate(zip(past, new, strict=True))]
    step = plan_step(blocks, past, new, shape.block_size, max_blocks=3)
    return Case(paged_model(shape, inline=False), chained(shape, [step], seed=6))


@case
def paged_padding_slots():
    """CUDA-graph style padding: 2 real decode tokens plus 2 pad tokens with slot -1 (skipped)."""
    shape = PagedShape(num_blocks=6, block_size=4, q_heads=2, kv_heads=2, head_dim=8)
    pool = BlockAllocator(shape.num_blocks, shape.block_size, seed=7)
    past = [3, 6]
    blocks = [pool.reserve(seq, n + 1) for seq, n in enumerate(past)]
    real = plan_step(blocks, past, [1, 1], shape.block_size, max_blocks=2)
    # Pad tokens sit after cu_seqlens_q[-1]; -1 must not wrap into the pool's last slot.
    padded = StepInputs(
        real.cu_seqlens_q,
        real.seq_lens,
        real.block_table,
        np.concatenate([real.slot_mapping, [-1, -1]]).astype(np.int64),
    )
    return Case(paged_model(shape), chained(shape, [padded], seed=7))


@case
def paged_rewritten_decoder_layer():
    """The KV-cache proposal's decoder layer (RoPE, TensorScatter, Attention-24) after to_paged."""
    from proposals.kv_cache import build
    from proposals.kv_cache import reference as kv

    rng = seeded(8)
    batch, hidden, q_heads, kv_heads, head_dim, max_len, block_size = 2, 16, 4, 2, 4, 8, 2
    weights = build.random_attention_weights(rng, hidden=hidden, q_heads=q_heads, kv_heads=kv_heads, head_dim=head_dim)
    cos, sin = kv.rope_caches(max_len, head_dim)
    linear = build.decoder_layer_model(weights, cos, sin, q_heads=q_heads, kv_heads=kv_heads, max_len=max_len)
    model = to_paged(linear, num_blocks=10, block_size=block_size)
    pool = BlockAllocator(10, block_size, seed=8)
    # Expected outputs: the KV proposal's numpy decoder layer on a linear cache; expected
    # pools: this topic's write_slots of the rows that step wrote into the linear cache.
    chunks = [rng.randn(batch, seq, hidden).astype(np.float32) for seq in (3, 1)]
    steps = kv.decoder_layer_steps(weights, cos, sin, chunks, q_heads=q_heads, kv_heads=kv_heads, max_len=max_len)
    key_cache = np.zeros((10, block_size, kv_heads, head_dim), np.float32)
    value_cache = np.zeros_like(key_cache)
    datasets = []
    for hidden_states, positions, step in steps:
        lengths, seq = step.write_indices, hidden_states.shape[1]
        blocks = [pool.reserve(b, int(lengths[b]) + seq) for b in range(batch)]
        plan = plan_step(blocks, lengths.tolist(), [seq] * batch, block_size, max_blocks=max_len // block_size)
        rows = [
            np.concatenate([c[b, :, lengths[b] : lengths[b] + seq].transpose(1, 0, 2) for b in range(batch)])
            for c in (step.present_key, step.present_value)
        ]
        new_key = write_slots(key_cache, rows[0], plan.slot_mapping)
        new_value = write_slots(value_cache, rows[1], plan.slot_mapping)
        inputs = {
            "hidden_states": hidden_states,
            "position_ids": positions,
            "key_cache.0": key_cache,
            "value_cache.0": value_cache,
            "nonpad_kv_seqlen": step.nonpad_kv_seqlen,
            "block_table": plan.block_table,
            "slot_mapping": plan.slot_mapping.reshape(batch, seq),
        }
        outputs = {"output": step.y, "key_cache_out.0": new_key, "value_cache_out.0": new_value}
        datasets.append(DataSet(inputs, outputs))
        key_cache, value_cache = new_key, new_value
    return Case(model, datasets, rtol=1e-5, atol=1e-5)
