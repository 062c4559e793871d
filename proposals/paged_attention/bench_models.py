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
from onnx import TensorProto, helper

from generator.errors import UsageError
from generator.onnx_build import make_model
from proposals.paged_attention.function_op import OPSET

LAYOUTS = ("nhd", "flat", "head_major", "whole_pool")


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


def _const(name: str, values: list[int]) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=helper.make_tensor(name, TensorProto.INT64, [len(values)], values)
    )


def paged_decode_model(shape: DecodeShape, layout: str) -> onnx.ModelProto:
    """ScatterND (write through slot_mapping) -> Gather (block_table) -> Attention-24.

    * ``nhd`` pool [NB, BS, Hkv, D]: Gather -> Reshape -> Transpose -> 4-D Attention;
    * ``flat`` pool [NB, BS, Hkv*D]: Gather -> Reshape -> 3-D Attention (no Transpose);
    * ``head_major`` pool [Hkv, NB, BS, D]: Gather on axis 1 -> Reshape -> 4-D Attention
      (no Transpose when batch is 1).
    """
    b, h, hq, d, bs = shape.batch, shape.kv_heads, shape.q_heads, shape.head_dim, shape.block_size
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    pool = list(shape.pool_shape(layout))
    q_shape = [b, 1, hq * d] if layout == "flat" else [b, hq, 1, d]
    inputs = [
        helper.make_tensor_value_info("query", f32, q_shape),
        helper.make_tensor_value_info("key", f32, [b, h * d]),
        helper.make_tensor_value_info("value", f32, [b, h * d]),
        helper.make_tensor_value_info("key_cache", f32, pool),
        helper.make_tensor_value_info("value_cache", f32, pool),
        helper.make_tensor_value_info("seq_lens", i64, [b]),
        helper.make_tensor_value_info("block_table", i64, [b, shape.blocks_per_seq]),
        helper.make_tensor_value_info("slot_mapping", i64, [b]),
    ]
    outputs = [
        helper.make_tensor_value_info("output", f32, q_shape),
        helper.make_tensor_value_info("key_cache_out", f32, pool),
        helper.make_tensor_value_info("value_cache_out", f32, pool),
    ]
    nodes = [
        _const("bs", [bs]),
        _const("last", [-1]),
        helper.make_node("Div", ["slot_mapping", "bs"], ["blk"]),
        helper.make_node("Mod", ["slot_mapping", "bs"], ["off"]),
        helper.make_node("Unsqueeze", ["blk", "last"], ["blk1"]),
        helper.make_node("Unsqueeze", ["off", "last"], ["off1"]),
    ]
    if layout == "whole_pool":
        return _whole_pool_model(shape)
    if layout == "head_major":
        # indices [Hkv, T, 3] = (head, block, offset); updates [Hkv, T, D]
        nodes += [
            _const("zero", [0]),
            _const("idx_shape", [h, b, 1]),
            _const("upd_shape", [b, h, d]),
            helper.make_node(
                "Constant",
                [],
                ["h_range"],
                value=helper.make_tensor("h_range", TensorProto.INT64, [h, 1, 1], list(range(h))),
            ),
            helper.make_node("Expand", ["h_range", "idx_shape"], ["hh"]),
            helper.make_node("Unsqueeze", ["blk1", "zero"], ["blk2"]),
            helper.make_node("Unsqueeze", ["off1", "zero"], ["off2"]),
            helper.make_node("Expand", ["blk2", "idx_shape"], ["bb"]),
            helper.make_node("Expand", ["off2", "idx_shape"], ["oo"]),
            helper.make_node("Concat", ["hh", "bb", "oo"], ["idx"], axis=-1),
        ]
        for name in ("key", "value"):
            nodes += [
                helper.make_node("Reshape", [name, "upd_shape"], [f"{name}_thd"]),
                helper.make_node("Transpose", [f"{name}_thd"], [f"{name}_upd"], perm=[1, 0, 2]),
            ]
        gather_axis, seq_shape = 1, [h, b, -1, d]
    else:
        nodes.append(helper.make_node("Concat", ["blk1", "off1"], ["idx"], axis=-1))
        upd = [b, h, d] if layout == "nhd" else [b, h * d]
        nodes.append(_const("upd_shape", upd))
        for name in ("key", "value"):
            nodes.append(helper.make_node("Reshape", [name, "upd_shape"], [f"{name}_upd"]))
        gather_axis = 0
        seq_shape = [b, -1, h, d] if layout == "nhd" else [b, -1, h * d]
    nodes.append(_const("seq_shape", seq_shape))
    for name in ("key", "value"):
        cache = f"{name}_cache"
        nodes += [
            helper.make_node("ScatterND", [cache, "idx", f"{name}_upd"], [f"{cache}_out"]),
            helper.make_node("Gather", [f"{cache}_out", "block_table"], [f"{name}_blocks"], axis=gather_axis),
            helper.make_node("Reshape", [f"{name}_blocks", "seq_shape"], [f"{name}_seq"]),
        ]
        if layout == "nhd":
            nodes.append(helper.make_node("Transpose", [f"{name}_seq"], [f"{name}_k"], perm=[0, 2, 1, 3]))
        elif layout == "head_major":
            perm = [1, 0, 2, 3]
            if b == 1:  # moving a size-1 axis: a free Reshape instead of a copy
                nodes += [
                    _const(f"{name}_bhsd", [1, h, -1, d]),
                    helper.make_node("Reshape", [f"{name}_seq", f"{name}_bhsd"], [f"{name}_k"]),
                ]
            else:
                nodes.append(helper.make_node("Transpose", [f"{name}_seq"], [f"{name}_k"], perm=perm))
        else:
            nodes.append(helper.make_node("Identity", [f"{name}_seq"], [f"{name}_k"]))
    heads = {"q_num_heads": hq, "kv_num_heads": h} if layout == "flat" else {}
    nodes.append(
        helper.make_node(
            "Attention",
            ["query", "key_k", "value_k", "", "", "", "seq_lens"],
            ["output"],
            is_causal=1,
            **heads,
        )
    )
    graph = helper.make_graph(nodes, f"paged_decode_{layout}", inputs, outputs)
    return make_model(graph, {"": OPSET})


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
    base = paged_decode_model(shape, "head_major")
    h, d, bs = shape.kv_heads, shape.head_dim, shape.block_size
    slots = shape.num_blocks * bs
    keep = []
    for node in base.graph.node:
        if node.op_type == "Attention":
            break
        if node.op_type in ("Gather", "Reshape") and node.output[0].endswith(("_blocks", "_seq", "_k")):
            continue
        if node.op_type == "Constant" and node.output[0] in ("seq_shape", "key_bhsd", "value_bhsd"):
            continue
        keep.append(node)
    i64 = TensorProto.INT64
    nodes = keep + [
        _const("pool_bhsd", [1, h, slots, d]),
        helper.make_node("Reshape", ["key_cache_out", "pool_bhsd"], ["key_k"]),
        helper.make_node("Reshape", ["value_cache_out", "pool_bhsd"], ["value_k"]),
        # slot of logical position p: block_table[0, p // bs] * bs + p % bs
        helper.make_node(
            "Constant", [], ["offsets"], value=helper.make_tensor("offsets", i64, [1, bs], list(range(bs)))
        ),
        helper.make_node("Squeeze", ["block_table", "zero_axis"], ["row"]),
        _const("zero_axis", [0]),
        helper.make_node("Unsqueeze", ["row", "last"], ["row1"]),
        helper.make_node("Mul", ["row1", "bs"], ["block_base"]),
        helper.make_node("Add", ["block_base", "offsets"], ["slot_grid"]),
        _const("flat_shape", [-1, 1]),
        helper.make_node("Reshape", ["slot_grid", "flat_shape"], ["owned_slots"]),
        helper.make_node(
            "Constant",
            [],
            ["positions"],
            value=helper.make_tensor(
                "positions", i64, [shape.blocks_per_seq * bs], list(range(shape.blocks_per_seq * bs))
            ),
        ),
        helper.make_node("Constant", [], ["unowned"], value=helper.make_tensor("unowned", i64, [slots], [-1] * slots)),
        helper.make_node("ScatterND", ["unowned", "owned_slots", "positions"], ["logical"]),
        helper.make_node("Constant", [], ["zero_i"], value=helper.make_tensor("zero_i", i64, [], [0])),
        helper.make_node("GreaterOrEqual", ["logical", "zero_i"], ["owned"]),
        helper.make_node("Less", ["logical", "seq_lens"], ["in_range"]),
        helper.make_node("And", ["owned", "in_range"], ["visible"]),
        _const("mask_shape", [1, 1, 1, slots]),
        helper.make_node("Reshape", ["visible", "mask_shape"], ["mask"]),
        helper.make_node("Attention", ["query", "key_k", "value_k", "mask"], ["output"]),
    ]
    # Constants first so every node's inputs are defined before it (topological order).
    nodes = [n for n in nodes if n.op_type == "Constant"] + [n for n in nodes if n.op_type != "Constant"]
    graph = helper.make_graph(nodes, "paged_decode_whole_pool", list(base.graph.input), list(base.graph.output))
    return make_model(graph, {"": OPSET})


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
