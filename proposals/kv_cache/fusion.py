"""The standard cache step fused onto onnxruntime's ``com.microsoft.GroupQueryAttention``,
with onnxscript's rewriter: the attention counterpart of :mod:`proposals.moe.fusion`.

A backend that keeps the standard form (TensorScatter-24 x2 + Attention-24, the pattern of
:func:`proposals.kv_cache.build.cache_attention`) and has a GQA kernel runs this rule. The
fused node reads and writes the same ``past_*`` buffers (GQA's shared past/present buffer,
bound in place through IOBinding as before), and attends only the ``seqlens_k + 1`` tokens
each sample holds, not the buffer's capacity. RotaryEmbedding stays a standard node in front
(``do_rotary=0``): its positions come from the graph, not from GQA's own position rule.

Match conditions (:func:`miss_reason`; each miss names the first that fails):

- two TensorScatter nodes write the key and the value into 4-D caches (B, Hkv, L, D) at the
  same ``write_indices``, along axis 2, in ``linear`` mode (a circular buffer keeps a window
  in ring order; GQA's shared buffer is linear);
- one Attention reads both outputs whole, with only ``nonpad_kv_seqlen`` among its optional
  inputs (no ``attn_mask``, no ``past_*``), ``is_causal=1``, no window attributes, no
  ``qk_matmul_output``, one output;
- ``nonpad_kv_seqlen`` is ``Add(write_indices, n)``: the valid length is the write position
  plus the new tokens, so GQA's ``seqlens_k = nonpad - 1`` puts the new rows at
  ``write_indices``; a ``nonpad_kv_seqlen`` graph input is taken on the caller's word that it
  is ``write_indices + S`` (the linear recipe of the KV-cache page; mobius-onnx's contract);
- Q, K and V are 4-D (B, H, S, D) with static heads and a head size that is a multiple
  of 8 (onnxruntime's CPU GQA kernel refuses others).

``scale`` and ``softcap`` carry over. The result feeds the original consumers through a
Reshape/Transpose back to (B, H, S, D), which onnxscript's transpose and reshape rules then
fold into the output projection's Reshape.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import IdentityEliminationPass, ShapeInferencePass
from onnxscript.rewriter import pattern, rewrite
from onnxscript.rewriter.rules.common import reshape_reshape_rule, transpose_transpose_rule

ORT_DOMAIN = "com.microsoft"
_UNSUPPORTED_ATTENTION_ATTRS = ("left_window_size", "right_window_size", "qk_matmul_output_mode")


# --8<-- [start:pattern]
def _cache_step(op, query, key, value, past_key, past_value, write_indices, nonpad):
    present_key = op.TensorScatter(past_key, key, write_indices, _allow_other_attributes=True)
    present_value = op.TensorScatter(past_value, value, write_indices, _allow_other_attributes=True)
    y = op.Attention(
        query, present_key, present_value, None, None, None, nonpad, _allow_other_attributes=True, _outputs=["y"]
    )
    return y, present_key, present_value


# --8<-- [end:pattern]


def _attr(node: ir.Node, name: str, default=None):
    attr = node.attributes.get(name)
    return default if attr is None else attr.value


def _static_4d(value: ir.Value) -> tuple[int, int] | None:
    """(heads, head size) of a (B, H, S, D) value when both are known."""
    shape = value.shape
    if shape is None or len(shape) != 4 or not isinstance(shape[1], int) or not isinstance(shape[3], int):
        return None
    return shape[1], shape[3]


# --8<-- [start:conditions]
def miss_reason(attention: ir.Node) -> str | None:
    """Why an Attention node and the scatters feeding it do not fuse; None when they do."""
    if len(attention.inputs) < 7 or attention.inputs[6] is None:
        return "no nonpad_kv_seqlen: not the external-cache form"
    if any(attention.inputs[i] is not None for i in (3, 4, 5)):
        return "attn_mask or past_key/past_value given"
    scatters = [attention.inputs[i].producer() for i in (1, 2)]
    if any(s is None or s.op_type != "TensorScatter" for s in scatters):
        return "K/V are not TensorScatter outputs"
    (key_scatter, value_scatter) = scatters
    if key_scatter.inputs[2] is not value_scatter.inputs[2]:
        return "key and value written at different write_indices"
    if any(_attr(s, "mode", "linear") != "linear" for s in scatters):
        return "circular buffer (sliding-window layer): GQA's shared buffer is linear"
    if any(_attr(s, "axis", -2) not in (2, -2) for s in scatters):
        return "cache not laid out (B, Hkv, L, D)"
    if _attr(attention, "is_causal", 0) != 1:
        return "is_causal is not 1"
    if any(name in attention.attributes for name in _UNSUPPORTED_ATTENTION_ATTRS) or len(attention.outputs) > 1:
        return "window attributes or qk_matmul_output"
    nonpad = attention.inputs[6]
    add = nonpad.producer()
    if not nonpad.is_graph_input() and (add is None or add.op_type != "Add" or key_scatter.inputs[2] not in add.inputs):
        return "nonpad_kv_seqlen is not write_indices + new tokens"
    shapes = [_static_4d(v) for v in (attention.inputs[0], key_scatter.inputs[1], value_scatter.inputs[1])]
    if None in shapes or shapes[1] != shapes[2] or shapes[0][1] != shapes[1][1]:
        return "Q/K/V not 4-D with static heads and head size"
    if shapes[0][1] % 8:
        return f"head size {shapes[0][1]} is not a multiple of 8 (onnxruntime's GQA kernel needs it)"
    return None


# --8<-- [end:conditions]


def _condition(context, y, **_) -> bool:
    return miss_reason(y.producer()) is None


# --8<-- [start:replacement]
def _gqa(op, query, key, value, past_key, past_value, nonpad, y, **_):
    heads, head_dim = _static_4d(query)
    kv_heads, _ = _static_4d(key)
    attention = y.producer()
    extra = {name: _attr(attention, name) for name in ("scale", "softcap") if name in attention.attributes}

    def merge_heads(x):  # (B, H, S, D) -> (B, S, H*D)
        return op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))

    seqlens_k = op.Cast(op.Sub(nonpad, op.Constant(value_int=1)), to=ir.DataType.INT32)
    total = op.Cast(op.ReduceMax(nonpad, keepdims=0), to=ir.DataType.INT32)
    out, present_key, present_value = op.GroupQueryAttention(
        merge_heads(query),
        merge_heads(key),
        merge_heads(value),
        past_key,
        past_value,
        seqlens_k,
        total,
        num_heads=heads,
        kv_num_heads=kv_heads,
        do_rotary=0,
        **extra,
        _domain=ORT_DOMAIN,
        _outputs=3,
    )
    split = op.Reshape(out, op.Constant(value_ints=[0, 0, heads, head_dim]))
    return op.Transpose(split, perm=[0, 2, 1, 3]), present_key, present_value


# --8<-- [end:replacement]

CACHE_STEP_TO_GQA = pattern.RewriteRule(_cache_step, _gqa, _condition, name="cache_step_to_gqa")
CLEANUP = [transpose_transpose_rule, reshape_reshape_rule]


@dataclass(frozen=True)
class FusionReport:
    attention_nodes: int
    fused: int
    misses: Mapping[str, str]  # Attention node name -> reason

    @property
    def hit_rate(self) -> float:
        return self.fused / self.attention_nodes if self.attention_nodes else 0.0


def fusion_report(model: onnx.ModelProto | ir.Model) -> FusionReport:
    """Which Attention nodes the rule fuses and, for the others, why not."""
    graph = _with_shapes(model).graph
    nodes = [n for n in graph if n.op_type == "Attention"]
    reasons = {n.name: miss_reason(n) for n in nodes}
    misses = {name: reason for name, reason in reasons.items() if reason is not None}
    return FusionReport(len(nodes), len(nodes) - len(misses), misses)


def _with_shapes(model: onnx.ModelProto | ir.Model) -> ir.Model:
    """The model with inferred shapes on its values (the conditions read heads and head size)."""
    ir_model = ir.serde.deserialize_model(model) if isinstance(model, onnx.ModelProto) else model
    return ShapeInferencePass()(ir_model).model


def fuse_to_gqa(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with every matching cache step replaced by one GroupQueryAttention."""
    ir_model = _with_shapes(model)
    ir_model.opset_imports.setdefault(ORT_DOMAIN, 1)
    fused = rewrite(ir_model, pattern_rewrite_rules=[CACHE_STEP_TO_GQA])
    fused = rewrite(fused, pattern_rewrite_rules=CLEANUP)
    # The rewriter keeps graph-output names through Identity nodes; GQA must write the bound
    # present buffer itself (an Identity would copy it), so its outputs take the names.
    IdentityEliminationPass()(fused)
    return ir.serde.serialize_model(fused)
