"""The paged serving loop: many requests at once on the rewritten decoder, each token-identical
to the contiguous onnxruntime backend and to transformers ``generate`` run on that request
alone; a pool that runs out makes requests wait (or be preempted and recomputed), never
corrupts another request's blocks; shared prefixes share blocks; freed blocks come back."""

from __future__ import annotations

import onnx
import pytest

from generator.errors import UsageError
from proposals.paged_attention.blocks import BlockManager
from proposals.text_pipeline import GenerationConfig, GenerationInput, create_pipeline
from proposals.text_pipeline.backends.paged import create_server
from proposals.text_pipeline.build import build_decoder
from proposals.text_pipeline.config import BeamSearchConfig
from proposals.text_pipeline.families import tiny_model
from proposals.text_pipeline.folder import decoder_bytes, write_folder
from proposals.text_pipeline.report import greedy, hf_greedy
from proposals.text_pipeline.runners import OrtRunner
from proposals.text_pipeline.serving import PagedCache, PagedRunner, PagedServer

SYSTEM = [(7 * i + 3) % 400 + 2 for i in range(13)]  # a shared 13-token prefix: three full blocks of 4
# (prompt, new tokens, step it arrives at): mixed lengths, three share SYSTEM, late joiners
REQUESTS = [
    (SYSTEM + [11, 12, 13], 9, 0),
    ([40, 41, 42, 43, 44, 45, 46], 14, 0),
    (SYSTEM + [90, 91], 6, 2),
    ([300], 11, 3),
    (SYSTEM + [11, 12, 13, 14, 15, 16, 17, 18], 8, 5),
    ([5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], 5, 7),
]


def _decoder(arch: str) -> onnx.ModelProto:
    # Mistral's zoo decoder slides a window (circular cache); the paged form needs a linear one
    if arch == "mistral":
        return build_decoder(tiny_model("mistral", sliding_window=None))
    return onnx.load_from_string(decoder_bytes(arch))


def _check_blocks(manager: BlockManager) -> None:
    """No block is both free and held; every count is the number of tables holding it."""
    held = [b for row in manager.tables.values() for b in row]
    assert not set(held) & set(manager.free)
    assert len(set(manager.free)) == len(manager.free)
    for block in range(manager.num_blocks):
        assert manager.refs[block] == held.count(block)
    assert len(set(held)) + len(manager.free) == manager.num_blocks


def _serve(server: PagedServer, requests=REQUESTS) -> dict[int, tuple]:
    """Submit each request at its arrival step, step until all are done; id -> new tokens."""
    ids, step = {}, 0
    while len(ids) < len(requests) or server.waiting or server.running:
        for index, (prompt, new, arrives) in enumerate(requests):
            if arrives == step:
                ids[index] = server.submit(prompt, GenerationConfig(max_new_tokens=new))
        server.step()
        _check_blocks(server.cache.manager)
        step += 1
    done = {f.id: f for f in server.collect()}
    return {index: done[rid] for index, rid in ids.items()}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral", "qwen3_moe", "mixtral"])
def test_served_requests_match_each_request_alone(arch):
    """Continuous batching with late joiners and shared prefixes, blocks of 4, shuffled."""
    decoder = _decoder(arch)
    server = PagedServer(PagedCache(decoder, num_blocks=48, block_size=4))
    served = _serve(server)
    model = tiny_model(arch, **({"sliding_window": None} if arch == "mistral" else {}))
    for index, (prompt, new, _) in enumerate(REQUESTS):
        alone = greedy(OrtRunner(decoder), [prompt], new)  # the contiguous backend's runner
        assert list(served[index].new_tokens) == alone[0]
        assert alone == hf_greedy(model, [prompt], new)
        assert served[index].finish_reason == "length"
    assert max(s.running for s in server.stats) >= 4  # several requests did run at once
    assert server.cache.manager.used == 0  # every block came back


def test_a_pool_that_runs_out_makes_requests_wait_and_corrupts_nothing():
    """Ten blocks of 4 (40 slots) for requests needing up to 24: admission waits while the
    head of the queue does not fit, and a running request that needs a block takes one
    back from the latest admitted, which recomputes later; each stays token-identical."""
    decoder = _decoder("llama")
    server = PagedServer(PagedCache(decoder, num_blocks=10, block_size=4))
    served = _serve(server)
    assert any(s.waiting for s in server.stats)
    assert sum(f.preemptions for f in served.values()) >= 1
    assert max(s.blocks_used for s in server.stats) == 10  # the pool was exhausted
    for index, (prompt, new, _) in enumerate(REQUESTS):
        assert list(served[index].new_tokens) == greedy(OrtRunner(decoder), [prompt], new)[0]


def test_an_admission_watermark_preempts_less_and_changes_no_token():
    """Admission that leaves blocks free for the running requests to grow into takes fewer
    blocks back (and throws away fewer computed tokens) on the same exhausted pool."""
    decoder = _decoder("llama")
    plain = PagedServer(PagedCache(decoder, num_blocks=10, block_size=4))
    kept = PagedServer(PagedCache(decoder, num_blocks=10, block_size=4), watermark=3)
    first, second = _serve(plain), _serve(kept)
    assert sum(f.preemptions for f in second.values()) < sum(f.preemptions for f in first.values())
    assert kept.recomputed_tokens < plain.recomputed_tokens
    assert all(first[i].new_tokens == second[i].new_tokens for i in first)
    with pytest.raises(UsageError, match=r"watermark is a count of free blocks in \[0, 10\), got 10"):
        PagedServer(PagedCache(decoder, num_blocks=10, block_size=4), watermark=10)


def test_a_request_that_can_never_fit_is_refused():
    server = PagedServer(PagedCache(_decoder("llama"), num_blocks=4, block_size=4))
    with pytest.raises(
        UsageError, match=r"may need 5 blocks of 4 tokens \(12 prompt \+ 9 new\); the pool has 4"
    ) as err:
        server.submit(list(range(2, 14)), GenerationConfig(max_new_tokens=9))
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="the prompt has 300 tokens; the model's context is 256"):
        server.submit([5] * 300, GenerationConfig(max_new_tokens=1))
    with pytest.raises(UsageError, match="no request submitted"):
        server.step()
    assert server.submit(list(range(2, 14)), GenerationConfig(max_new_tokens=4)) == 0  # 15 slots: fits


def test_shared_prefixes_share_blocks():
    """Two prompts with the same 13 first tokens: three full blocks of 4 are stored once."""
    server = PagedServer(PagedCache(_decoder("llama"), num_blocks=32, block_size=4))
    a = server.submit(SYSTEM + [11, 12, 13], GenerationConfig(max_new_tokens=3))  # 16 tokens: 4 blocks
    b = server.submit(SYSTEM + [90, 91], GenerationConfig(max_new_tokens=3))  # 15 tokens: 4 blocks, 3 shared
    server.step()
    manager = server.cache.manager
    assert manager.tables[a][:3] == manager.tables[b][:3]
    assert manager.tables[a][3] != manager.tables[b][3]
    assert [manager.refs[x] for x in manager.tables[b]] == [2, 2, 2, 1]
    assert manager.used == 5 and server.stats[-1].tokens_cached == 16 + 3
    assert server.stats[-1].generated == 2
    server.run()
    assert manager.used == 0 and not manager.prefixes  # released blocks leave the prefix table


def test_freed_blocks_are_reused():
    server = PagedServer(PagedCache(_decoder("llama"), num_blocks=12, block_size=4))
    first = server.submit(list(range(20, 30)), GenerationConfig(max_new_tokens=3))
    server.step()
    blocks = list(server.cache.manager.tables[first])
    server.run()
    second = server.submit(list(range(100, 108)), GenerationConfig(max_new_tokens=2))
    server.step()
    assert set(server.cache.manager.tables[second]) <= set(blocks)  # the freed blocks, first


def test_block_manager_copies_a_forked_block_before_writing():
    manager = BlockManager(6, 4)
    manager.admit(0, [])
    manager.grow(0, 6)  # one full block, one with two tokens
    manager.fork(0, 1)
    assert manager.tables[1] == manager.tables[0] and manager.used == 2
    copies = manager.writable(1, 6, 7)  # the partly filled block is shared: copy it
    assert copies == [(manager.tables[0][1], manager.tables[1][1])]
    assert manager.tables[1][0] == manager.tables[0][0]  # the full block stays shared
    assert manager.writable(1, 6, 7) == []  # its own now
    manager.release(0)
    manager.release(1)
    assert manager.used == 0


def test_onnxruntime_paged_backend_behind_create_pipeline(tmp_path):
    """The WG interface on the paged cache: a batch, and beam search (copy-on-write forks)."""
    folder = write_folder("llama", tmp_path / "llama")
    prompts = [GenerationInput("Attention reads the whole cache"), GenerationInput("The")]
    configs = [
        GenerationConfig(max_new_tokens=12),
        GenerationConfig(max_new_tokens=6, beam_search_config=BeamSearchConfig(num_beams=4, num_return_sequences=2)),
    ]
    paged, contiguous = create_pipeline("onnxruntime-paged", folder), create_pipeline("onnxruntime", folder)
    assert isinstance(paged.engine.runner, PagedRunner)
    for config in configs:
        paged.set_generation_config(config)
        contiguous.set_generation_config(config)
        assert paged.generate(prompts) == contiguous.generate(prompts)
    contiguous.set_generation_config(configs[0])
    server = create_server(folder, num_blocks=16)
    rid = server.submit(paged.encode(prompts[1]), GenerationConfig(max_new_tokens=12))
    assert server.run()[0].new_tokens == contiguous.generate(prompts[1:])[0].token_ids
    assert rid == 0


def test_paged_backend_refuses_bad_input(tmp_path):
    with pytest.raises(UsageError, match="needs a linear cache; this mistral decoder slides a 16-token window"):
        create_pipeline("onnxruntime-paged", write_folder("mistral", tmp_path / "m"))
    with pytest.raises(UsageError, match="num_blocks must be a positive integer, got 0"):
        create_server(write_folder("llama", tmp_path / "l"), num_blocks=0)
    # the WG Generator cannot wait for blocks: a full pool is a one-line error
    with pytest.raises(UsageError, match="needs 1 more blocks, 0 are free"):
        greedy(PagedRunner(PagedCache(_decoder("llama"), num_blocks=2, block_size=4)), [[5, 6, 7]], 8)


def _alone(decoder: onnx.ModelProto, prompt: list[int], config: GenerationConfig):
    """The WG Generator on the contiguous runner, one request: its sequence state."""
    from proposals.text_pipeline.generation import Generator

    gen = Generator(OrtRunner(decoder), config)
    gen.append_input_tokens([prompt])
    while not gen.is_done():
        gen.generate_next_token()
    return gen.seqs[0]


def test_sampled_requests_with_eos_match_each_request_alone():
    """Sampling (a seeded RNG per request), min_new_tokens and an EOS that ends two requests
    early: served together, each as the WG Generator on the contiguous runner gives alone."""
    from proposals.text_pipeline.config import SamplingConfig

    decoder = _decoder("qwen2")
    prompts = [SYSTEM + [11, 12], SYSTEM + [40], [9, 8, 7, 6]]
    sampling = [SamplingConfig(do_sample=True, rng_seed=seed, temperature=0.8, top_k=20) for seed in (1, 2, 3)]
    free = [
        _alone(decoder, p, GenerationConfig(max_new_tokens=16, sampling_config=s))
        for p, s in zip(prompts, sampling, strict=True)
    ]
    # EOS: the 6th sampled token of the first two requests (the third never meets its EOS)
    eos = [free[0].new_tokens[5], free[1].new_tokens[5], 501]
    configs = [
        GenerationConfig(max_new_tokens=16, min_new_tokens=2, eos_token_ids={e}, sampling_config=s)
        for e, s in zip(eos, sampling, strict=True)
    ]
    server = PagedServer(PagedCache(decoder, num_blocks=24, block_size=4))
    ids = [server.submit(p, c) for p, c in zip(prompts, configs, strict=True)]
    done = {f.id: f for f in server.run()}
    reasons = []
    for rid, prompt, config in zip(ids, prompts, configs, strict=True):
        alone = _alone(decoder, prompt, config)
        assert list(done[rid].new_tokens) == alone.new_tokens
        reasons.append((done[rid].finish_reason, alone.finish_reason))
    assert [r for r, _ in reasons] == [r for _, r in reasons]
    assert [r for r, _ in reasons][:2] == ["eos", "eos"] and len(done[ids[0]].new_tokens) <= 6


def test_scatternd_writes_the_pool_input_straight_into_the_output():
    """What lets one bound buffer be updated in place: each pool input feeds a ScatterND
    directly, and that ScatterND's output is the pool output (no Reshape in between, which
    would make onnxruntime copy the pool every run)."""
    from proposals.paged_attention.rewrite import to_paged

    paged = to_paged(_decoder("llama"), num_blocks=8, block_size=4)
    pools = [i.name for i in paged.graph.input if "_cache." in i.name]
    outputs = {o.name for o in paged.graph.output}
    scatters = {n.input[0]: n.output[0] for n in paged.graph.node if n.op_type == "ScatterND"}
    assert len(pools) == 4
    for name in pools:
        assert scatters[name] == name.replace("_cache.", "_cache_out.") and scatters[name] in outputs
