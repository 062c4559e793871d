"""PagedAttention as a function op in the project's proposal domain.

The body is the standard-op form: ScatterND writes through ``slot_mapping``, Gather
reads by ``block_table``, Attention-24 attends with ``nonpad_kv_seqlen`` and
``is_causal``. Two extra steps handle what Attention-24 lacks: packed queries of
different lengths per sequence (unpacked left-padded, packed back after) and the
"-1 skips the write" rule (skipped tokens go to throw-away rows past the pool).
"""

from __future__ import annotations

import onnx
from onnxscript import script
from onnxscript.values import Opset

from generator.onnx_build import PROPOSAL_DOMAIN

OPSET = 24  # Attention-24 is the first with nonpad_kv_seqlen
op = Opset("", OPSET)
proposal = Opset(PROPOSAL_DOMAIN, 1)


# --8<-- [start:body]
@script(proposal, default_opset=op)
def PagedAttention(
    query,
    key,
    value,
    key_cache,
    value_cache,
    cu_seqlens_q,
    seq_lens,
    block_table,
    slot_mapping,
    scale: float,
    is_causal: int = 1,
    softcap: float = 0.0,
):
    # Shapes: key_cache [NB, BS, Hkv, D], value_cache [NB, BS, Hkv, Dv]; query [T, Hq*D].
    zero = op.Constant(value_int=0)
    one = op.Constant(value_int=1)
    first = op.Constant(value_ints=[0])
    last = op.Constant(value_ints=[-1])
    k_head = op.Shape(key_cache, start=2)  # [Hkv, D]
    v_head = op.Shape(value_cache, start=2)  # [Hkv, Dv]
    num_slots = op.ReduceProd(op.Shape(key_cache, start=0, end=2), keepdims=1)  # [NB*BS]

    # 1. Write. ScatterND would wrap a -1 slot to the last slot and skipped tokens would
    #    collide, so skipped token t goes to throw-away row num_slots + t instead.
    t = op.Range(zero, op.Size(slot_mapping), one)
    slots = op.Where(op.Less(slot_mapping, zero), op.Add(t, num_slots), slot_mapping)
    slots = op.Unsqueeze(slots, last)
    k_new = op.Reshape(key, op.Concat(last, k_head, axis=0))
    v_new = op.Reshape(value, op.Concat(last, v_head, axis=0))
    k_rows = op.Concat(op.Reshape(key_cache, op.Concat(last, k_head, axis=0)), k_new, axis=0)
    v_rows = op.Concat(op.Reshape(value_cache, op.Concat(last, v_head, axis=0)), v_new, axis=0)
    k_rows = op.Slice(op.ScatterND(k_rows, slots, k_new), first, num_slots)
    v_rows = op.Slice(op.ScatterND(v_rows, slots, v_new), first, num_slots)
    key_cache_out = op.Reshape(k_rows, op.Shape(key_cache))
    value_cache_out = op.Reshape(v_rows, op.Shape(value_cache))

    # 2. Read. Gather each sequence's blocks: [B, M, BS, Hkv, D] -> [B, Hkv, M*BS, D].
    batch = op.Shape(block_table, start=0, end=1)
    k_seq = op.Gather(key_cache_out, block_table, axis=0)
    v_seq = op.Gather(value_cache_out, block_table, axis=0)
    k_seq = op.Reshape(k_seq, op.Concat(batch, last, k_head, axis=0))
    v_seq = op.Reshape(v_seq, op.Concat(batch, last, v_head, axis=0))
    k_bhsd = op.Transpose(k_seq, perm=[0, 2, 1, 3])
    v_bhsd = op.Transpose(v_seq, perm=[0, 2, 1, 3])

    # 3. Unpack queries, left-padded to the longest: Attention-24's causal mask is
    #    bottom-right aligned, so each sequence's last query must sit in the last row.
    ends = op.Slice(cu_seqlens_q, op.Constant(value_ints=[1]), op.Shape(cu_seqlens_q))
    q_lens = op.Sub(ends, op.Slice(cu_seqlens_q, first, last))
    q_max = op.ReduceMax(q_lens, keepdims=0)
    padded = op.Add(op.Unsqueeze(op.Sub(ends, q_max), last), op.Range(zero, q_max, one))
    padded = op.Max(padded, zero)  # sequence 0's padding rows would wrap to the end
    q_tok = op.Reshape(query, op.Concat(first, last, op.Shape(key_cache, start=3), axis=0))  # [T, Hq, D]
    q_bhsd = op.Transpose(op.Gather(q_tok, padded, axis=0), perm=[0, 2, 1, 3])

    # 4. Attend. Keys past seq_lens[b] (block tails, unused table entries) are masked.
    y_bhsd = op.Attention(
        q_bhsd,
        k_bhsd,
        v_bhsd,
        None,
        None,
        None,
        seq_lens,
        is_causal=is_causal,
        scale=scale,
        softcap=softcap,
    )

    # 5. Pack back: token t of sequence b is padded row b*Lq + Lq - ends[b] + t.
    #    Padding tokens (t >= cu_seqlens_q[-1]) read the last real row and are zeroed.
    y_rows = op.Flatten(op.Transpose(y_bhsd, perm=[0, 2, 1, 3]), axis=2)  # [B*Lq, Hq*Dv]
    num_real = op.Gather(cu_seqlens_q, op.Constant(value_int=-1))
    t_real = op.Min(t, op.Sub(num_real, one))
    ended = op.LessOrEqual(op.Unsqueeze(ends, first), op.Unsqueeze(t_real, last))  # [T, B]
    seq_of_t = op.ReduceSum(op.Cast(ended, to=onnx.TensorProto.INT64), last, keepdims=0)
    row = op.Add(op.Mul(seq_of_t, q_max), op.Sub(q_max, op.Gather(ends, seq_of_t)))
    y = op.Gather(y_rows, op.Add(row, t_real), axis=0)
    real = op.Unsqueeze(op.Less(t, num_real), last)
    output = op.Where(real, y, op.CastLike(op.Constant(value_float=0.0), y))
    return output, key_cache_out, value_cache_out


# --8<-- [end:body]
