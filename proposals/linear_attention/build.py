"""Graph builders of the linear-attention proposal (onnxscript GraphBuilder, opset 27).

One convention, the recurrent counterpart of the KV-cache proposal's: the state is a graph
input ``past_state`` (B, H_kv, d_k, d_v) and a graph output ``present_state`` of the same
shape, and the token dimension is symbolic (``seq``), so one graph serves prefill
(``seq`` = prompt length) and every decode step (``seq`` = 1) with the state carried between
runs. q/k/v are packed (B, seq, heads*head_size), as LinearAttention-27 takes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from generator.onnx_build import builder_model, graph_builder
from proposals.linear_attention.reference import DELTA, GATED

FLOAT = ir.DataType.FLOAT
OPSET = 27


@dataclass(frozen=True)
class Layout:
    """One LinearAttention node's attributes and the shape of its optional inputs.

    ``decay`` is ``"head"`` (one log-decay per KV head, (B, T, H_kv)) or ``"key"`` (one per
    key dimension, (B, T, H_kv*d_k)); ``beta`` is ``"head"`` ((B, T, H_kv)) or ``"shared"``
    ((B, T, 1)). Rules that do not read an input ignore its field.
    """

    update_rule: str
    q_heads: int
    kv_heads: int
    d_k: int
    d_v: int
    decay: str = "head"
    beta: str = "head"
    scale: float | None = None
    chunk_size: int | None = None
    past_state: bool = True

    def attributes(self) -> dict[str, object]:
        attrs: dict[str, object] = {
            "q_num_heads": self.q_heads,
            "kv_num_heads": self.kv_heads,
            "update_rule": self.update_rule,
        }
        if self.scale is not None:
            attrs["scale"] = self.scale
        if self.chunk_size is not None:
            attrs["chunk_size"] = self.chunk_size
        return attrs

    @property
    def decay_width(self) -> int | None:
        if self.update_rule not in GATED:
            return None
        return self.kv_heads * (self.d_k if self.decay == "key" else 1)

    @property
    def beta_width(self) -> int | None:
        if self.update_rule not in DELTA:
            return None
        return self.kv_heads if self.beta == "head" else 1


# --8<-- [start:state_step]
def linear_attention_model(layout: Layout, *, batch: int | str = "batch", seq: int | str = "seq") -> onnx.ModelProto:
    """One LinearAttention-27 node: ``query, key, value, past_state[, decay][, beta]``
    -> ``output, present_state``; the state in and out under the names a decoder uses."""
    b = graph_builder(f"linear_attention_{layout.update_rule}", {"": OPSET})
    packed = {"query": layout.q_heads * layout.d_k, "key": layout.kv_heads * layout.d_k}
    packed["value"] = layout.kv_heads * layout.d_v
    args = [b.input(name, FLOAT, [batch, seq, width]) for name, width in packed.items()]
    state = [batch, layout.kv_heads, layout.d_k, layout.d_v]
    args.append(b.input("past_state", FLOAT, state) if layout.past_state else None)
    for name, width in (("decay", layout.decay_width), ("beta", layout.beta_width)):
        args.append(None if width is None else b.input(name, FLOAT, [batch, seq, width]))
    while args[-1] is None:
        args.pop()
    output, present = b.op.LinearAttention(*args, _outputs=2, **layout.attributes())
    b.add_output(output, "output")
    b.add_output(present, "present_state")
    return builder_model(b)


# --8<-- [end:state_step]


def gated_delta_decode_model(layout: Layout, *, batch: int | str = "batch") -> onnx.ModelProto:
    """The same decode step (T = 1, per-head decay and rate, H_q = H_kv) from standard ops
    without a Scan: what a runtime could run for decode instead of the op's function body.

    ``S = exp(g) * S; u = beta * (v - k S); S = S + k^T u; o = scale * q S`` with k, q as
    rows, so the state is never transposed.
    """
    if layout.update_rule != "gated_delta" or layout.q_heads != layout.kv_heads or layout.decay != "head":
        raise ValueError("gated_delta_decode_model takes gated_delta with per-head decay and H_q = H_kv")
    b = graph_builder("gated_delta_decode_step", {"": OPSET})
    op = b.op
    heads, d_k, d_v = layout.kv_heads, layout.d_k, layout.d_v
    query = b.input("query", FLOAT, [batch, 1, heads * d_k])
    key = b.input("key", FLOAT, [batch, 1, heads * d_k])
    value = b.input("value", FLOAT, [batch, 1, heads * d_v])
    state = b.input("past_state", FLOAT, [batch, heads, d_k, d_v])
    decay = b.input("decay", FLOAT, [batch, 1, heads])
    beta = b.input("beta", FLOAT, [batch, 1, heads])

    def ints(name: str, values: list[int]) -> ir.Value:
        return op.initializer(ir.tensor(np.asarray(values, np.int64), name=name), name)

    def rows(x: ir.Value, size: int, name: str) -> ir.Value:  # (B, 1, H*D) -> (B, H, 1, D)
        return op.Transpose(op.Reshape(x, ints(f"{name}_shape", [0, 1, heads, size])), perm=[0, 2, 1, 3])

    def per_head(x: ir.Value, name: str) -> ir.Value:  # (B, 1, H) -> (B, H, 1, 1)
        return op.Unsqueeze(op.Transpose(x, perm=[0, 2, 1]), ints(f"{name}_axes", [3]))

    k_row = rows(key, d_k, "k")
    decayed = op.Mul(state, op.Exp(per_head(decay, "decay")))
    update = op.Mul(per_head(beta, "beta"), op.Sub(rows(value, d_v, "v"), op.MatMul(k_row, decayed)))
    present = op.Add(decayed, op.MatMul(op.Transpose(k_row, perm=[0, 1, 3, 2]), update))
    scale = layout.scale or 1.0 / np.sqrt(d_k)
    read = op.Mul(op.MatMul(rows(query, d_k, "q"), present), op.initializer(ir.tensor(np.float32(scale)), "scale"))
    output = op.Reshape(op.Transpose(read, perm=[0, 2, 1, 3]), ints("out_shape", [0, 1, heads * d_v]))
    b.add_output(output, "output")
    b.add_output(present, "present_state")
    return builder_model(b)
