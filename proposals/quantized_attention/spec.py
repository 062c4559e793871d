"""The QuantizedAttention function-op draft as one schema object (``docs.spec_markdown`` renders
it like onnx Operators.md, with the function body of ``function_op``)."""

from __future__ import annotations

from generator.onnx_build import PROPOSAL_DOMAIN
from generator.opspec import Attribute, OpSchema, Parameter, TypeConstraint

DOC = """
Attention-24 over a KV cache stored as quantized codes. The op reads the caches as
`DequantizeLinear` does, `key = (key_cache - 0) * key_scale` (blocked along `key_axis`
with `key_block_size`, or per tensor when `key_block_size` is 0 and the scale is a
scalar), likewise for values, and then computes exactly Attention-24 with
`nonpad_kv_seqlen`. The function body below *is* the definition.

Writing the cache is not part of the op: new rows go through `QuantizeLinear`
(round half to even, saturate) and `TensorScatter`, as for a float cache, and dynamic
scales go into a scale cache with a second `TensorScatter` at the same `write_indices`.
A kernel may dequantize inside its GEMMs (per-channel key scales fold into the query,
per-channel value scales into the output) instead of materialising the float cache.

Granularities, for a `[B, H, L, D]` cache: per tensor (scale `[]`, `block_size` 0),
per (head, channel) (scale `[B, H, 1, D]`, `axis` 2, `block_size` L), per token
(scale `[B, H, L, 1]`, `axis` 3, `block_size` D), per token and group of G channels
(scale `[B, H, L, D/G]`, `axis` 3, `block_size` G). Codes are symmetric (no zero point):
every deployed quantized-cache kernel surveyed is.
"""

SCHEMA = OpSchema(
    name="QuantizedAttention",
    domain=PROPOSAL_DOMAIN,
    since_version=1,
    summary="Attention-24 reading int8, int4 or float8e4m3fn KV caches through DequantizeLinear.",
    doc=DOC,
    attributes=(
        Attribute(
            "key_axis", "int", "DequantizeLinear axis of the key scales (2: tokens, 3: channels).", allowed=(1, 2, 3)
        ),
        Attribute("key_block_size", "int", "DequantizeLinear block_size of the key scales; 0: per tensor."),
        Attribute("value_axis", "int", "Same, for the value cache.", allowed=(1, 2, 3)),
        Attribute("value_block_size", "int", "Same, for the value cache."),
        Attribute("scale", "float", "Scale of Q·Kᵀ (Attention-24's scale, spelled out)."),
        Attribute(
            "is_causal", "int", "1: bottom-right causal mask with nonpad_kv_seqlen; 0: none.", default=1, allowed=(0, 1)
        ),
        Attribute("softcap", "float", "softcap·tanh(x/softcap) before masking; 0 = off.", default=0.0),
    ),
    inputs=(
        Parameter("query", "T", "(B, q_num_heads, S, head_size)", "Queries of the new tokens."),
        Parameter("key_cache", "C", "(B, kv_num_heads, L, head_size)", "Key codes after this step's write."),
        Parameter("value_cache", "C", "(B, kv_num_heads, L, head_size)", "Value codes after this step's write."),
        Parameter("key_scale", "T", "[] or blocked like key_cache", "Key scales (a static tensor or the scale cache)."),
        Parameter("value_scale", "T", "[] or blocked like value_cache", "Value scales."),
        Parameter("nonpad_kv_seqlen", "tensor(int64)", "(B)", "Valid cache slots per sample, as in Attention-24."),
    ),
    outputs=(Parameter("Y", "T", "(B, q_num_heads, S, head_size)", "Attention output."),),
    type_constraints=(
        TypeConstraint("T", ("tensor(float)", "tensor(float16)", "tensor(bfloat16)"), "Activations and scales."),
        TypeConstraint("C", ("tensor(int8)", "tensor(int4)", "tensor(float8e4m3fn)"), "Cache codes (symmetric)."),
    ),
)
