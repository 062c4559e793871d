"""Graph builders of the linear-attention proposal (onnxscript GraphBuilder, opset 27).

One convention, the recurrent counterpart of the KV-cache proposal's: the state is a graph
input ``past_state`` (B, H_kv, d_k, d_v) and a graph output ``present_state`` of the same
shape, and the token dimension is symbolic (``seq``), so one graph serves prefill
(``seq`` = prompt length) and every decode step (``seq`` = 1) with the state carried between
runs. q/k/v are packed (B, seq, heads*head_size), as LinearAttention-27 takes them.
"""

from __future__ import annotations

from dataclasses import dataclass

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
