"""The PagedAttention function-op draft as one schema object, rendered like onnx Operators.md."""

from __future__ import annotations

import onnx

from generator.onnx_build import PROPOSAL_DOMAIN
from generator.opspec import Attribute, OpSchema, Parameter, TypeConstraint, render_spec
from generator.registry import select
from proposals.paged_attention.function_op import PagedAttention

DOC = """
One attention step over a KV cache kept in fixed-size blocks of a shared pool, for a
batch of sequences whose new tokens are packed into one stream. It is three steps:

1. **Write.** Token `t`'s key and value rows go to flat slot `slot_mapping[t]` of the
   pools, i.e. block `slot_mapping[t] // block_size`, offset `slot_mapping[t] % block_size`.
   A negative slot means "do not write" (padding tokens). Non-negative slots must be
   distinct; with duplicates the result is undefined, as for ScatterND.
2. **Read.** Sequence `b`'s keys are the first `seq_lens[b]` positions of its logical
   cache, where position `p` lives at block `block_table[b, p // block_size]`, offset
   `p % block_size`, read after the write. Table entries at or past
   `ceil(seq_lens[b] / block_size)` are never read; they may hold any value in
   `[-num_blocks, num_blocks)` (ORT and attention-gym use -1, vLLM its null block 0).
   A block id may appear in several rows (prefix sharing).
3. **Attend.** Sequence `b`'s queries are tokens `cu_seqlens_q[b] : cu_seqlens_q[b+1]`;
   query `i` sits at position `seq_lens[b] - q_len[b] + i` and, when `is_causal`, sees
   keys `0 ..` that position (bottom-right alignment, as Attention-24 with
   `nonpad_kv_seqlen`). Grouped-query attention maps query head `h` to KV head
   `h // (q_num_heads / kv_num_heads)`; head counts come from the shapes. Scores are
   scaled, soft-capped, masked and soft-maxed exactly as in Attention-24.
   Tokens at or past `cu_seqlens_q[-1]` are padding: their output rows are 0.

The pool layout `[num_blocks, block_size, kv_num_heads, head_size]` is the *logical*
layout. A backend may store the pools in any physical order (vLLM's HND stride order,
OpenVINO's transposed GPU key cache) and may update them in place: `key_cache_out` and
`value_cache_out` may alias `key_cache` and `value_cache`, as for TensorScatter in the
ONNX in-place KV cache note. Allocation, eviction, prefix hashing and copy-on-write
stay with the caller, who hands over `block_table` and `slot_mapping` every step.
"""

# One row per input/attribute: (this op, ORT com.microsoft.PagedAttention, vLLM V1 with
# the FlashAttention backend, FlashInfer). Sources are cited in README.md.
MAPPING_ROWS: tuple[tuple[str, str, str, str], ...] = (
    (
        "`query` `[T, Hq·D]`",
        "`query` (0) `[T, Hq·D]` or packed QKV",
        "`query[:num_actual_tokens]`",
        "`q` `[nnz_qo, Hq, D]`",
    ),
    (
        "`key`, `value`",
        "`key`, `value` (1, 2)",
        "`key`, `value` into `reshape_and_cache_flash`",
        "`append_key`, `append_value` of `append_paged_kv_cache`",
    ),
    (
        "`key_cache`, `value_cache` `[NB, BS, Hkv, D]`",
        "`key_cache`, `value_cache` (3, 4), same layout, updated in place",
        "`kv_cache` `(2, NB, BS, Hkv, D)`, physical NHD or HND stride order",
        "`paged_kv_cache` `[pages, 2, page, Hkv, D]` (NHD) or a `(k, v)` tuple",
    ),
    (
        "`cu_seqlens_q` `[B+1]`",
        "`cumulative_sequence_length` (5), int32",
        "`query_start_loc` (`cu_seqlens_q`)",
        "`qo_indptr`",
    ),
    (
        "`seq_lens` `[B]`",
        "`past_seqlens` (6) + query lengths",
        "`seq_lens` (`seqused_k`)",
        "`page_size·(pages−1) + kv_last_page_len`",
    ),
    (
        "`block_table` `[B, M]`",
        "`block_table` (7), −1 = unmapped",
        "`block_table`, int32",
        "`kv_indptr` + `kv_indices` (CSR, unused entries dropped)",
    ),
    (
        "`slot_mapping` `[T]`, −1 skips",
        "`slot_mapping` (10, optional), int32, −1 skips; derived when absent",
        "`slot_mapping`, `PAD_SLOT_ID = −1`",
        "`batch_indices` + `positions` of `append_paged_kv_cache`",
    ),
    ("`scale`", "`scale`", "`softmax_scale`", "`sm_scale`"),
    ("`is_causal`", "`is_causal` (bottom-right, default 1)", "`causal`", "`causal` in `plan()`"),
    ("`softcap`", "`softcap`", "`logits_soft_cap`", "`logits_soft_cap`"),
    (
        "head counts from shapes",
        "`num_heads`, `kv_num_heads` attributes",
        "layer config",
        "`num_qo_heads`, `num_kv_heads` in `plan()`",
    ),
    (
        "— (not in this draft)",
        "rotary (`cos_cache`, `sin_cache`), `head_sink`, QK-norm, quantised caches, "
        "`local_window_size`, `attention_metadata`",
        "sliding window, ALiBi, sinks, FP8 `k_scale`/`v_scale`, cascade",
        "`window_left`, custom masks, FP8",
    ),
)
MAPPING_HEADER = ("this op", "ORT `com.microsoft.PagedAttention`", "vLLM V1 (FlashAttention)", "FlashInfer")


def markdown_table(header: tuple[str, ...], rows: tuple[tuple[str, ...], ...]) -> str:
    lines = [" | ".join(header), " | ".join("---" for _ in header)]
    lines += [" | ".join(row) for row in rows]
    return "\n".join(f"| {line} |" for line in lines)


MAPPING = (
    markdown_table(MAPPING_HEADER, MAPPING_ROWS)
    + """

Index tensors are int64 here because ScatterND indices and `nonpad_kv_seqlen` are int64
in ONNX; the int32 tensors of the other three convert with one Cast each.
"""
)

SCHEMA = OpSchema(
    name="PagedAttention",
    domain=PROPOSAL_DOMAIN,
    since_version=1,
    summary="Attention over a block-paged KV cache for a packed batch of sequences.",
    doc=DOC,
    attributes=(
        Attribute("scale", "float", "Scale of Q·Kᵀ; 1/sqrt(head_size) when absent.", default=None),
        Attribute("is_causal", "int", "1: bottom-right causal mask; 0: none.", default=1, allowed=(0, 1)),
        Attribute("softcap", "float", "softcap·tanh(x/softcap) before masking; 0 = off.", default=0.0),
    ),
    inputs=(
        Parameter(
            "query",
            "T",
            "(num_tokens, q_num_heads * head_size)",
            "New tokens' queries, all sequences packed one after the other.",
        ),
        Parameter("key", "T", "(num_tokens, kv_num_heads * head_size)", "New tokens' keys."),
        Parameter("value", "T", "(num_tokens, kv_num_heads * v_head_size)", "New tokens' values."),
        Parameter(
            "key_cache", "T", "(num_blocks, block_size, kv_num_heads, head_size)", "Key pool shared by all sequences."
        ),
        Parameter(
            "value_cache",
            "T",
            "(num_blocks, block_size, kv_num_heads, v_head_size)",
            "Value pool shared by all sequences.",
        ),
        Parameter(
            "cu_seqlens_q",
            "tensor(int64)",
            "(batch + 1)",
            "Query start offsets: sequence b owns tokens cu[b]:cu[b+1]; cu[0] = 0.",
        ),
        Parameter("seq_lens", "tensor(int64)", "(batch)", "KV length of each sequence after this step (past + new)."),
        Parameter(
            "block_table",
            "tensor(int64)",
            "(batch, max_blocks_per_seq)",
            "Physical block of each logical block of each sequence.",
        ),
        Parameter(
            "slot_mapping",
            "tensor(int64)",
            "(num_tokens)",
            "Flat pool slot (block * block_size + offset) of each new token; -1 skips.",
        ),
    ),
    outputs=(
        Parameter(
            "output",
            "T",
            "(num_tokens, q_num_heads * v_head_size)",
            "Attention output per token; 0 for padding tokens.",
        ),
        Parameter(
            "key_cache_out",
            "T",
            "(num_blocks, block_size, kv_num_heads, head_size)",
            "Key pool after the write; may alias key_cache.",
        ),
        Parameter(
            "value_cache_out",
            "T",
            "(num_blocks, block_size, kv_num_heads, v_head_size)",
            "Value pool after the write; may alias value_cache.",
        ),
    ),
    type_constraints=(
        TypeConstraint(
            "T",
            ("tensor(float16)", "tensor(bfloat16)", "tensor(float)"),
            "Activations and cache (quantised caches are out of scope).",
        ),
    ),
    notes={"Mapping to existing paged-attention interfaces": MAPPING},
)


def function_proto() -> onnx.FunctionProto:
    """The body shipped as a model-local function in the zoo."""
    return PagedAttention.to_function_proto()


def spec_markdown() -> str:
    """The op's spec section for ``spec.md``, with the zoo case that uses the function as
    its example, linked to the catalogue relative to ``spec.md``.

    The page inserts it with a generated-markdown marker, so MkDocs validates the links.
    """
    examples = [s for s in select(["paged_attention"]) if s.name == "paged_function_op"]
    return render_spec(SCHEMA, function_proto(), examples, catalogue_link="../../catalogue.md")
