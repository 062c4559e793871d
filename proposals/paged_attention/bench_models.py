"""Decode-step models for the bench: the contiguous in-place baseline and paged
arrangements built from standard ops, each with its pool layout.

All take one new token per sequence (``slot_mapping`` [B]) and a block table
[B, M]; all write the pool with ScatterND straight into the graph output, so an
IOBinding that binds the pool input and output to one OrtValue updates it in place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
from onnxscript import GraphBuilder

from generator.errors import UsageError
from generator.onnx_build import builder_model, graph_builder
from proposals.paged_attention.function_op import OPSET

LAYOUTS = ("nhd", "flat", "head_major", "whole_pool")
FLOAT, INT64 = ir.DataType.FLOAT, ir.DataType.INT64


@dataclass(frozen=True)
class DecodeShape:
    batch: int
    context: int  # KV length after the step
    block_size: int
    q_heads: int
    kv_heads: int
    head_dim: int
    pool_blocks: int | None = None  # default: exactly the blocks the batch uses

    @property
    def blocks_per_seq(self) -> int:
        return -(-self.context // self.block_size)

    @property
    def num_blocks(self) -> int:
        return self.pool_blocks or self.batch * self.blocks_per_seq

    def pool_shape(self, layout: str) -> tuple[int, ...]:
        nb, bs, h, d = self.num_blocks, self.block_size, self.kv_heads, self.head_dim
        shapes = {
            "nhd": (nb, bs, h, d),
            "flat": (nb, bs, h * d),
            "head_major": (h, nb, bs, d),
            "whole_pool": (h, nb, bs, d),
        }
        if layout not in shapes:
            raise UsageError(f"unknown pool layout {layout!r}; valid: {', '.join(LAYOUTS)}")
        return shapes[layout]


@dataclass(frozen=True)
class DecodeIO:
    """One decode step's graph inputs (names as in :func:`paged_step_feeds`)."""

    query: ir.Value
    key: ir.Value
    value: ir.Value
    key_cache: ir.Value
    value_cache: ir.Value
    seq_lens: ir.Value
    block_table: ir.Value
    slot_mapping: ir.Value


def _decode_inputs(b: GraphBuilder, shape: DecodeShape, layout: str) -> DecodeIO:
    batch, kv = shape.batch, shape.kv_heads * shape.head_dim
    pool = list(shape.pool_shape(layout))
    return DecodeIO(
        b.input("query", FLOAT, _query_shape(shape, layout)),
        b.input("key", FLOAT, [batch, kv]),
        b.input("value", FLOAT, [batch, kv]),
        b.input("key_cache", FLOAT, pool),
        b.input("value_cache", FLOAT, pool),
        b.input("seq_lens", INT64, [batch]),
        b.input("block_table", INT64, [batch, shape.blocks_per_seq]),
        b.input("slot_mapping", INT64, [batch]),
    )


def _query_shape(shape: DecodeShape, layout: str) -> list[int]:
    if layout == "flat":
        return [shape.batch, 1, shape.q_heads * shape.head_dim]
    return [shape.batch, shape.q_heads, 1, shape.head_dim]


def _ints(b: GraphBuilder, name: str, values: list[int] | int) -> ir.Value:
    """A named int64 constant (named, so the graph pictures say what each one is)."""
    found = b.graph.initializers.get(name)
    return found if found is not None else b.initializer(ir.tensor(np.array(values, np.int64)), name)


def _output(b: GraphBuilder, value: ir.Value, name: str, dims: list[int]) -> None:
    value.type, value.shape = ir.TensorType(FLOAT), ir.Shape(dims)
    b.add_output(value, name)


def _write(b: GraphBuilder, io: DecodeIO, shape: DecodeShape, layout: str) -> tuple[ir.Value, ir.Value]:
    """ScatterND of each sequence's new key and value through ``slot_mapping``.

    Returns the written key and value pools.
    """
    op, batch, h, d, bs = b.op, shape.batch, shape.kv_heads, shape.head_dim, shape.block_size
    block_size, last = _ints(b, "block_size", bs), _ints(b, "last_axis", [-1])
    block = op.Unsqueeze(op.Div(io.slot_mapping, block_size), last)  # [B, 1]
    offset = op.Unsqueeze(op.Mod(io.slot_mapping, block_size), last)
    if layout == "head_major":
        # indices [Hkv, B, 3] = (head, block, offset); updates [Hkv, B, D]
        grid, first = _ints(b, "index_grid", [h, batch, 1]), _ints(b, "first_axis", [0])
        heads = op.Expand(_ints(b, "head_ids", [[[i]] for i in range(h)]), grid)
        index = op.Concat(
            heads, op.Expand(op.Unsqueeze(block, first), grid), op.Expand(op.Unsqueeze(offset, first), grid), axis=-1
        )
        rows = _ints(b, "update_rows", [batch, h, d])
        updates = [op.Transpose(op.Reshape(x, rows), perm=[1, 0, 2]) for x in (io.key, io.value)]
    else:
        index = op.Concat(block, offset, axis=-1)  # [B, 2] = (block, offset)
        rows = _ints(b, "update_rows", [batch, h, d] if layout == "nhd" else [batch, h * d])
        updates = [op.Reshape(x, rows) for x in (io.key, io.value)]
    pools = (io.key_cache, io.value_cache)
    key_out, value_out = (op.ScatterND(pool, index, x) for pool, x in zip(pools, updates, strict=True))
    return key_out, value_out


def _read(b: GraphBuilder, pool: ir.Value, io: DecodeIO, shape: DecodeShape, layout: str) -> ir.Value:
    """Gather each sequence's blocks by ``block_table`` and lay them out as Attention reads them."""
    op, batch, h, d = b.op, shape.batch, shape.kv_heads, shape.head_dim
    if layout == "head_major":
        sequence = op.Reshape(op.Gather(pool, io.block_table, axis=1), _ints(b, "sequence_shape", [h, batch, -1, d]))
        if batch == 1:  # moving a size-1 axis: a free Reshape instead of a copy
            return op.Reshape(sequence, _ints(b, "bhsd_shape", [1, h, -1, d]))
        return op.Transpose(sequence, perm=[1, 0, 2, 3])
    blocks = op.Gather(pool, io.block_table, axis=0)
    if layout == "nhd":
        return op.Transpose(op.Reshape(blocks, _ints(b, "sequence_shape", [batch, -1, h, d])), perm=[0, 2, 1, 3])
    return op.Reshape(blocks, _ints(b, "sequence_shape", [batch, -1, h * d]))  # flat: 3-D Attention, no Transpose


def paged_decode_model(shape: DecodeShape, layout: str) -> onnx.ModelProto:
    """ScatterND (write through slot_mapping) -> Gather (block_table) -> Attention-24.

    * ``nhd`` pool [NB, BS, Hkv, D]: Gather -> Reshape -> Transpose -> 4-D Attention;
    * ``flat`` pool [NB, BS, Hkv*D]: Gather -> Reshape -> 3-D Attention (no Transpose);
    * ``head_major`` pool [Hkv, NB, BS, D]: Gather on axis 1 -> Reshape -> 4-D Attention
      (no Transpose when batch is 1);
    * ``whole_pool``: see :func:`_whole_pool_model`.
    """
    pool = list(shape.pool_shape(layout))
    if layout == "whole_pool":
        return _whole_pool_model(shape)
    b = graph_builder(f"paged_decode_{layout}", {"": OPSET})
    io = _decode_inputs(b, shape, layout)
    key_out, value_out = _write(b, io, shape, layout)
    key, value = (_read(b, written, io, shape, layout) for written in (key_out, value_out))
    heads = {"q_num_heads": shape.q_heads, "kv_num_heads": shape.kv_heads} if layout == "flat" else {}
    y = b.op.Attention(io.query, key, value, None, None, None, io.seq_lens, is_causal=1, **heads)
    _output(b, y, "output", _query_shape(shape, layout))
    _output(b, key_out, "key_cache_out", pool)
    _output(b, value_out, "value_cache_out", pool)
    return builder_model(b)


def paged_step_feeds(shape: DecodeShape, layout: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs for one decode step: scattered block tables, each sequence at ``context``."""
    rng = np.random.RandomState(seed)
    table = rng.permutation(shape.num_blocks).reshape(shape.batch, shape.blocks_per_seq)
    pos = shape.context - 1
    slots = table[:, pos // shape.block_size] * shape.block_size + pos % shape.block_size
    q_shape = (
        (shape.batch, 1, shape.q_heads * shape.head_dim)
        if layout == "flat"
        else (shape.batch, shape.q_heads, 1, shape.head_dim)
    )
    kv = shape.kv_heads * shape.head_dim
    return {
        "query": rng.randn(*q_shape).astype(np.float32),
        "key": rng.randn(shape.batch, kv).astype(np.float32),
        "value": rng.randn(shape.batch, kv).astype(np.float32),
        "key_cache": rng.randn(*shape.pool_shape(layout)).astype(np.float32),
        "value_cache": rng.randn(*shape.pool_shape(layout)).astype(np.float32),
        "seq_lens": np.full(shape.batch, shape.context, np.int64),
        "block_table": table.astype(np.int64),
        "slot_mapping": slots.astype(np.int64),
    }


def _whole_pool_model(shape: DecodeShape) -> onnx.ModelProto:
    """Batch-1 decode that attends over the whole head-major pool, masked, with no Gather.

    A physical-to-logical map (ScatterND of positions through the block table, -1 for
    slots the sequence does not own) gives a boolean mask; key order inside the pool does
    not matter to softmax, and the causal limit is ``position < seq_len``. Cost grows with
    the pool, not the context: fine only while the pool holds little but this sequence.
    """
    if shape.batch != 1:
        raise UsageError(f"the whole-pool arrangement is a batch-1 decode; got batch {shape.batch}")
    h, d, bs = shape.kv_heads, shape.head_dim, shape.block_size
    slots, positions = shape.num_blocks * bs, shape.blocks_per_seq * bs
    b = graph_builder("paged_decode_whole_pool", {"": OPSET})
    op = b.op
    io = _decode_inputs(b, shape, "head_major")
    key_out, value_out = _write(b, io, shape, "head_major")
    key, value = (op.Reshape(pool, _ints(b, "pool_bhsd", [1, h, slots, d])) for pool in (key_out, value_out))
    # slot of logical position p: block_table[0, p // bs] * bs + p % bs
    offsets = _ints(b, "block_offsets", [list(range(bs))])
    row = op.Squeeze(io.block_table, _ints(b, "first_axis", [0]))
    block_base = op.Mul(op.Unsqueeze(row, _ints(b, "last_axis", [-1])), _ints(b, "block_size", bs))
    owned_slots = op.Reshape(op.Add(block_base, offsets), _ints(b, "slot_column", [-1, 1]))
    unowned = _ints(b, "unowned", [-1] * slots)
    logical = op.ScatterND(unowned, owned_slots, _ints(b, "positions", list(range(positions))))
    visible = op.And(op.GreaterOrEqual(logical, _ints(b, "zero", 0)), op.Less(logical, io.seq_lens))
    y = op.Attention(io.query, key, value, op.Reshape(visible, _ints(b, "mask_shape", [1, 1, 1, slots])))
    pool = list(shape.pool_shape("whole_pool"))
    _output(b, y, "output", _query_shape(shape, "whole_pool"))
    _output(b, key_out, "key_cache_out", pool)
    _output(b, value_out, "value_cache_out", pool)
    return builder_model(b)


def widen_pool(feeds: dict[str, np.ndarray], factor: int, seed: int = 1) -> dict[str, np.ndarray]:
    """The same step in an NHD pool ``factor`` times larger: the batch's blocks move to
    random new ids and the other blocks hold noise (other sequences' data)."""
    rng = np.random.RandomState(seed)
    out = dict(feeds)
    old = feeds["key_cache"]
    bs = old.shape[1]
    new_ids = rng.permutation(old.shape[0] * factor)[: old.shape[0]]
    for name in ("key_cache", "value_cache"):
        pool = rng.randn(old.shape[0] * factor, *old.shape[1:]).astype(np.float32)
        pool[new_ids] = feeds[name]
        out[name] = pool
    out["block_table"] = new_ids[feeds["block_table"]]
    slots = feeds["slot_mapping"]
    out["slot_mapping"] = new_ids[slots // bs] * bs + slots % bs
    return out
