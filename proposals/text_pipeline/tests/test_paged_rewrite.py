"""The linear -> paged rewrite on every text-pipeline decoder: greedy generation on the
paged cache (shuffled blocks, a block table per step) is token-identical to the
contiguous cache the decoder was built with."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from generator.errors import UsageError
from generator.ort import session
from proposals.paged_attention.blocks import BlockAllocator, plan_step
from proposals.paged_attention.rewrite import to_paged
from proposals.text_pipeline import build_decoder
from proposals.text_pipeline.build import spec_from_model
from proposals.text_pipeline.families import tiny_model

PROMPTS = [[5, 9, 30, 41, 77, 100], [3, 250, 12, 8, 60, 61]]  # one length: the graph takes [B, S]
NEW_TOKENS, MAX_LEN, BLOCK_SIZE, NUM_BLOCKS = 5, 16, 4, 12
# Mistral's tiny config slides a 16-token window (a circular buffer), Gemma's an 8-token one
# on layer 0: the rewrite pages linear buffers only, so their paged forms are built
# without the window (Gemma: every layer full; softcaps, norms and RoPE tables stay).
ALL_FULL = {"layer_types": ["full_attention", "full_attention"]}
OVERRIDES = {
    "llama": {},
    "qwen2": {},
    "qwen3": {},
    "mistral": {"sliding_window": None},
    "gemma2": ALL_FULL,
    "gemma3": ALL_FULL,
    "phi3": {},
    "phi3_partial": {},
    "olmo2": {},
    "granite": {},
    "smollm3": {},
}
OVERRIDES |= {"qwen3_moe": {}, "mixtral": {}}  # MoE decoders: the MoE function op stays as it is


def _contiguous_greedy(decoder: onnx.ModelProto) -> tuple[list[list[int]], list[np.ndarray]]:
    spec, run = spec_from_model(decoder), session(decoder).run
    names = [o.name for o in decoder.graph.output]
    batch = len(PROMPTS)
    caches = {
        f"past_{kind}_{i}": np.zeros(spec.cache_shape(batch, MAX_LEN), np.float32)
        for i in range(spec.num_layers)
        for kind in ("key", "value")
    }
    ids, past, tokens, logits = np.array(PROMPTS, np.int64), 0, [], []
    for _ in range(NEW_TOKENS):
        feeds = {"input_ids": ids, "write_indices": np.full(batch, past, np.int64), **caches}
        out = dict(zip(names, run(None, feeds), strict=True))
        past += ids.shape[1]
        caches = {name.replace("present", "past"): value for name, value in out.items() if name != "logits"}
        logits.append(out["logits"][:, -1])
        ids = out["logits"][:, -1].argmax(-1)[:, None]
        tokens.append(ids[:, 0].tolist())
    return [list(row) for row in zip(*tokens, strict=True)], logits


def _paged_greedy(paged: onnx.ModelProto) -> tuple[list[list[int]], list[np.ndarray]]:
    run = session(paged).run
    names = [o.name for o in paged.graph.output]
    pools = {
        i.name: np.zeros([d.dim_value for d in i.type.tensor_type.shape.dim], np.float32)
        for i in paged.graph.input
        if "_cache." in i.name
    }
    allocator = BlockAllocator(NUM_BLOCKS, BLOCK_SIZE, seed=3)  # blocks handed out shuffled
    batch = len(PROMPTS)
    ids, past, tokens, logits = np.array(PROMPTS, np.int64), 0, [], []
    for _ in range(NEW_TOKENS):
        new = ids.shape[1]
        blocks = [allocator.reserve(b, past + new) for b in range(batch)]
        plan = plan_step(blocks, [past] * batch, [new] * batch, BLOCK_SIZE, max_blocks=MAX_LEN // BLOCK_SIZE)
        feeds = {
            "input_ids": ids,
            "write_indices": np.full(batch, past, np.int64),  # the decoder's positions come from it
            "block_table": plan.block_table,
            "slot_mapping": plan.slot_mapping.reshape(batch, new),
            **pools,
        }
        out = dict(zip(names, run(None, feeds), strict=True))
        past += new
        pools = {name.replace("_out", ""): value for name, value in out.items() if name != "logits"}
        logits.append(out["logits"][:, -1])
        ids = out["logits"][:, -1].argmax(-1)[:, None]
        tokens.append(ids[:, 0].tolist())
    return [list(row) for row in zip(*tokens, strict=True)], logits


@pytest.mark.parametrize("arch", sorted(OVERRIDES))
def test_paged_decoder_generates_the_same_tokens(arch):
    decoder = build_decoder(tiny_model(arch, **OVERRIDES[arch]))
    paged = to_paged(decoder, num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
    onnx.checker.check_model(paged, full_check=True)
    layers = spec_from_model(decoder).num_layers
    assert [i.name for i in paged.graph.input][-2:] == ["block_table", "slot_mapping"]
    assert {o.name for o in paged.graph.output} == {"logits"} | {
        f"{kind}_cache_out.{i}" for i in range(layers) for kind in ("key", "value")
    }
    assert "TensorScatter" not in {n.op_type for n in paged.graph.node}
    want_tokens, want_logits = _contiguous_greedy(decoder)
    got_tokens, got_logits = _paged_greedy(paged)
    assert got_tokens == want_tokens
    for got, want in zip(got_logits, want_logits, strict=True):
        np.testing.assert_allclose(
            got, want, rtol=1e-5, atol=1e-5
        )  # float32 logits of two graphs: error scales with size


@pytest.mark.parametrize("arch", ["mistral", "gemma2"])
def test_sliding_window_decoder_is_refused(arch):
    """Mistral's own config keeps a circular buffer, Gemma's one on its sliding layer beside
    a linear one: the rewrite names why it stops, in one line."""
    with pytest.raises(UsageError, match="circular; only linear buffers can be paged") as err:
        to_paged(build_decoder(tiny_model(arch)), num_blocks=NUM_BLOCKS, block_size=BLOCK_SIZE)
    assert "\n" not in str(err.value)
