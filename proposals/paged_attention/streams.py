"""Run a linear-buffer model and its paged rewrite on the same token stream, step by step.

The linear model keeps [B, ..., max_len, ...] caches and writes at ``write_indices``;
the paged model keeps block pools and gets block tables and slot mappings from a
shuffled ``BlockAllocator``, so the two share nothing but the tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from generator.errors import UsageError
from generator.onnx_build import seeded
from generator.ort import session
from proposals.paged_attention.blocks import BlockAllocator, plan_step
from proposals.paged_attention.rewrite import find_sites

TokenInputs = Callable[[np.random.RandomState, int, int, int], dict[str, np.ndarray]]


@dataclass(frozen=True)
class StepDiff:
    """Largest |linear - paged| on each non-cache output, and on the valid cache rows."""

    q_len: int
    output: float
    cache: float


def _zeros(info: onnx.ValueInfoProto, batch: int) -> np.ndarray:
    dims = [d.dim_value if d.HasField("dim_value") else batch for d in info.type.tensor_type.shape.dim]
    return np.zeros(dims, dtype=onnx.helper.tensor_dtype_to_np_dtype(info.type.tensor_type.elem_type))


def run_both(
    linear: onnx.ModelProto,
    paged: onnx.ModelProto,
    token_inputs: TokenInputs,
    *,
    batch: int,
    chunks: Sequence[int],
    num_blocks: int,
    block_size: int,
    seed: int = 0,
    run: Callable[[onnx.ModelProto], Callable] | None = None,
) -> list[StepDiff]:
    """Feed ``chunks`` (tokens per step, same for every sequence) to both models."""
    run = run or (lambda m: session(m).run)
    sites = find_sites(ir.serde.deserialize_model(linear).graph)
    nonpad = sites[0].attention.inputs[6].name
    write_indices = sites[0].scatter.inputs[2].name
    infos = {i.name: i for i in linear.graph.input}
    linear_run, paged_run = run(linear), run(paged)
    lin_names = [o.name for o in linear.graph.output]
    paged_names = [o.name for o in paged.graph.output]
    caches = {s.cache.name: _zeros(infos[s.cache.name], batch) for s in sites}
    pools = {i.name: _zeros(i, batch) for i in paged.graph.input if "_cache." in i.name}
    present_of = {s.present.name: s for s in sites}
    allocator = BlockAllocator(pools[next(iter(pools))].shape[0], block_size, seed=seed)
    max_len = sum(chunks)
    max_blocks = -(-max_len // block_size)
    rng = seeded(seed)
    past, diffs = 0, []
    for q_len in chunks:
        tokens = token_inputs(rng, batch, past, q_len)
        blocks = [allocator.reserve(b, past + q_len) for b in range(batch)]
        step = plan_step(blocks, [past] * batch, [q_len] * batch, block_size, max_blocks=max_blocks)
        lens = np.full(batch, past + q_len, dtype=np.int64)
        lin_out = dict(
            zip(
                lin_names,
                linear_run(
                    None,
                    {
                        **tokens,
                        **caches,
                        write_indices: np.full(batch, past, np.int64),
                        nonpad: lens,
                    },
                ),
                strict=True,
            )
        )
        paged_out = dict(
            zip(
                paged_names,
                paged_run(
                    None,
                    {
                        **tokens,
                        **pools,
                        nonpad: lens,
                        "block_table": step.block_table,
                        "slot_mapping": step.slot_mapping.reshape(batch, q_len),
                    },
                ),
                strict=True,
            )
        )
        out_diff, cache_diff = 0.0, 0.0
        for name in lin_names:
            if name in present_of:
                site = present_of[name]
                pool_name = f"{site.kind}_cache_out.{site.layer}"
                cache_diff = max(
                    cache_diff,
                    _cache_gap(
                        lin_out[name],
                        paged_out[pool_name],
                        step.block_table,
                        past + q_len,
                        site.axis,
                    ),
                )
                caches[site.cache.name] = lin_out[name]
                pools[f"{site.kind}_cache.{site.layer}"] = paged_out[pool_name]
            else:
                out_diff = max(out_diff, float(np.abs(lin_out[name] - paged_out[name]).max()))
        diffs.append(StepDiff(q_len, out_diff, cache_diff))
        past += q_len
    return diffs


def _cache_gap(linear: np.ndarray, pool: np.ndarray, table: np.ndarray, length: int, axis: int) -> float:
    """|linear cache - pool read back by block table| over the first ``length`` positions."""
    block_size = pool.shape[1]
    gap = 0.0
    for b in range(linear.shape[0]):
        seq = np.moveaxis(linear[b], axis - 1, 0)[:length]
        paged = np.stack([pool[table[b, p // block_size], p % block_size] for p in range(length)])
        gap = max(gap, float(np.abs(seq.reshape(paged.shape) - paged).max()))
    return gap


def linear_steps(inputs: dict[str, np.ndarray]) -> list[tuple[int, int, dict[str, np.ndarray]]]:
    """A paged step split into one linear-buffer step per sequence.

    Each sequence's past K/V are read out of the input pools into a contiguous
    [1, Hkv, max_len, D] cache; the new tokens become [1, H, S, D]. Returns
    ``(start, end, feeds of the linear-buffer model)`` per sequence, named as the inputs
    of :func:`proposals.kv_cache.build.cache_step_model`.
    """
    key_cache, value_cache = inputs["key_cache"], inputs["value_cache"]
    block_size, hkv, d = key_cache.shape[1:]
    cu, lens, table = inputs["cu_seqlens_q"], inputs["seq_lens"], inputs["block_table"]
    hq = inputs["query"].shape[1] // d
    max_len = table.shape[1] * block_size
    steps = []
    for b in range(len(lens)):
        start, end = int(cu[b]), int(cu[b + 1])
        past = int(lens[b]) - (end - start)
        cache = {}
        for name, pool in (("past_key", key_cache), ("past_value", value_cache)):
            flat = np.zeros((max_len, hkv, d), dtype=np.float32)
            for p in range(past):
                flat[p] = pool[table[b, p // block_size], p % block_size]
            cache[name] = flat.transpose(1, 0, 2)[None]
        feeds = {
            "q": _heads(inputs["query"][start:end], hq),
            "k": _heads(inputs["key"][start:end], hkv),
            "v": _heads(inputs["value"][start:end], hkv),
            **cache,
            "write_indices": np.array([past], np.int64),
            "nonpad_kv_seqlen": np.array([int(lens[b])], np.int64),
        }
        steps.append((start, end, feeds))
    return steps


def contiguous_outputs(inputs: dict[str, np.ndarray], engine: str = "onnxruntime") -> np.ndarray:
    """A paged step's output recomputed sequence by sequence on a contiguous linear buffer.

    ``engine`` is ``onnxruntime`` (the KV-cache proposal's TensorScatter + Attention-24
    step model) or ``kv_reference`` (its numpy ``linear_step``). Returns [T, Hq*Dv]
    like the paged ``output``; padding tokens' rows stay 0.
    """
    from proposals.kv_cache.build import cache_step_model
    from proposals.kv_cache.reference import linear_step

    d = inputs["key_cache"].shape[3]
    hq = inputs["query"].shape[1] // d
    out = np.zeros((inputs["query"].shape[0], hq * d), dtype=np.float32)
    steps = linear_steps(inputs)
    if engine == "onnxruntime":
        max_len = steps[0][2]["past_key"].shape[2]
        kv_heads = inputs["key_cache"].shape[2]
        run = session(cache_step_model(q_heads=hq, kv_heads=kv_heads, max_len=max_len, head_dim=d)).run
    for start, end, feeds in steps:
        if engine == "onnxruntime":
            y = run(None, feeds)[0]
        elif engine == "kv_reference":
            y = linear_step(
                feeds["past_key"],
                feeds["past_value"],
                feeds["write_indices"],
                feeds["q"],
                feeds["k"],
                feeds["v"],
            ).y
        else:
            raise UsageError(f"unknown engine {engine!r}; valid: onnxruntime, kv_reference")
        out[start:end] = y[0].transpose(1, 0, 2).reshape(end - start, -1)
    return out


def _heads(rows: np.ndarray, heads: int) -> np.ndarray:
    """Packed token rows [S, H*D] -> one sequence's [1, H, S, D]."""
    return rows.reshape(rows.shape[0], heads, -1).transpose(1, 0, 2)[None]
