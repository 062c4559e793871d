"""One bad request cannot jam the paged server, and sampling never returns an id outside the
vocabulary (issue 23, items 1 and 9): a request that fails is finished with an error reason,
its blocks are freed, and the others go on; bad prompts are refused at ``submit``."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from generator.errors import UsageError
from proposals.text_pipeline import GenerationConfig, reference
from proposals.text_pipeline.config import SamplingConfig
from proposals.text_pipeline.folder import decoder_bytes
from proposals.text_pipeline.serving import PagedCache, PagedServer

GREEDY = GenerationConfig(max_new_tokens=5)
SAMPLED = GenerationConfig(max_new_tokens=5, sampling_config=SamplingConfig(do_sample=True, rng_seed=1))


class _FaultyCache(PagedCache):
    """The llama decoder, but the logits of sequence ``bad`` are NaN (a model that overflowed),
    or its runs raise (a runtime failure), from its ``after``-th run on."""

    def __init__(self, *, bad: int, fault: str, after: int = 0) -> None:
        super().__init__(onnx.load_from_string(decoder_bytes("llama")), num_blocks=24, block_size=4)
        self.bad, self.fault, self.after, self.runs = bad, fault, after, 0

    def _run(self, feeds):
        hit = any(f.seq == self.bad for f in feeds)
        if hit:
            self.runs += 1
        if hit and self.runs > self.after and self.fault == "raise":
            raise RuntimeError("Gather idx=512 out of range\nsecond line")
        logits = super()._run(feeds)
        if hit and self.runs > self.after and self.fault == "nan":
            logits[[i for i, f in enumerate(feeds) if f.seq == self.bad]] = np.nan
        return logits


@pytest.fixture(scope="module")
def healthy_tokens() -> tuple[int, ...]:
    server = PagedServer(PagedCache(onnx.load_from_string(decoder_bytes("llama")), num_blocks=24, block_size=4))
    server.submit([5, 6, 7, 8, 9], GREEDY)
    return server.run()[0].new_tokens


@pytest.mark.parametrize(("fault", "after"), [("nan", 0), ("nan", 2), ("raise", 0), ("raise", 2)])
def test_a_failing_request_finishes_with_an_error_and_the_others_go_on(healthy_tokens, fault, after):
    """NaN logits in sampling (at prefill or in a batched decode), or a run that raises."""
    cache = _FaultyCache(bad=1, fault=fault, after=after)
    server = PagedServer(cache)
    first = server.submit([5, 6, 7, 8, 9], GREEDY)
    bad = server.submit([10, 11, 12], SAMPLED)
    last = server.submit([5, 6, 7, 8, 9], GREEDY)
    for _ in range(12):
        if not (server.waiting or server.running):
            break
        server.step()
    done = {f.id: f for f in server.collect()}
    assert sorted(done) == [first, bad, last]
    assert done[bad].finish_reason == "error" and "\n" not in done[bad].error and done[bad].error
    assert len(done[bad].new_tokens) <= after
    for rid in (first, last):
        assert done[rid].finish_reason == "length" and done[rid].new_tokens == healthy_tokens
    assert cache.manager.used == 0 and len(cache.manager.free) == cache.manager.num_blocks


def test_a_degenerate_temperature_is_refused_as_a_setting():
    with pytest.raises(UsageError, match="temperature must be a finite float > 0, at least 1.18e-38"):
        SamplingConfig(do_sample=True, temperature=1e-40)
    SamplingConfig(do_sample=True, temperature=1e-30)  # a tiny normal one is fine


@pytest.mark.parametrize("row", [[np.nan, 0.0, 1.0], [np.inf, 0.0, 1.0], [-np.inf, -np.inf, -np.inf]])
def test_sampling_refuses_a_row_with_no_distribution(row):
    """torch.multinomial (transformers' sampler) refuses such rows; before, id 3 came back."""
    logits = np.asarray([row], np.float32)
    with pytest.raises(UsageError, match="cannot sample row 0"):
        reference.choose(logits, SamplingConfig(do_sample=True), np.random.RandomState(0))


def test_a_draw_that_rounds_up_to_the_total_picks_the_last_allowed_token():
    class Top:
        def random_sample(self, n):
            return np.full(n, np.nextafter(1.0, 0.0))

    logits = np.asarray([[0.3, 0.1, 0.2, reference.FILTERED]] * 3, np.float32)
    chosen = reference.choose(logits, SamplingConfig(do_sample=True), Top())
    assert chosen.tolist() == [2, 2, 2]


def test_a_tiny_temperature_fails_in_one_line_on_the_cli(capsys):
    from proposals.text_pipeline.__main__ import main

    assert main(["hi", "--sample", "--temperature", "1e-40", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "temperature" in err and "Traceback" not in err


@pytest.fixture(scope="module")
def server() -> PagedServer:
    return PagedServer(PagedCache(onnx.load_from_string(decoder_bytes("llama")), num_blocks=24, block_size=4))


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([1.7, 2], "integer token ids"),
        ([1, True], "integer token ids"),
        ([], "non-empty"),
        (np.asarray([1.0, 2.0]), "integer token ids"),
        (np.asarray([[1, 2]]), "integer token ids"),
        ("12", "integer token ids"),
        ([1, 10**6], "integer token ids"),
        ([-1], "integer token ids"),
    ],
)
def test_submit_refuses_prompts_that_are_not_token_ids(server, prompt, message):
    with pytest.raises(UsageError, match=message):
        server.submit(prompt, GREEDY)
    assert not server.waiting


def test_submit_takes_an_integer_array_like_a_list(server):
    rid = server.submit(np.asarray([5, 6, 7, 8, 9], np.int32), GREEDY)
    assert server.waiting[-1].prompt == [5, 6, 7, 8, 9] and server.waiting[-1].id == rid
    assert all(type(t) is int for t in server.waiting[-1].prompt)
    server.waiting.clear()


def test_submit_refuses_eos_ids_outside_the_vocabulary(server):
    vocab = server.cache.spec.vocab_size
    with pytest.raises(UsageError, match=rf"eos_token_ids \[{vocab}\] are not in the model's vocabulary"):
        server.submit([5, 6], GenerationConfig(max_new_tokens=3, eos_token_ids=frozenset({0, vocab})))
    assert not server.waiting


def test_beam_search_ends_when_every_candidate_ends(tmp_path):
    """Found by the hardening probes: with every token an EOS no beam continues, and the
    search took max() of no scores (a ValueError traceback)."""
    from proposals.text_pipeline import GenerationInput, create_pipeline
    from proposals.text_pipeline.build import spec_from_model
    from proposals.text_pipeline.config import BeamSearchConfig
    from proposals.text_pipeline.folder import write_folder

    folder = write_folder("llama", tmp_path / "llama")
    pipeline = create_pipeline("onnxruntime", folder)
    vocab = spec_from_model(onnx.load(folder / "model.onnx")).vocab_size
    everything = frozenset(range(vocab))
    pipeline.set_generation_config(
        GenerationConfig(max_new_tokens=3, eos_token_ids=everything, beam_search_config=BeamSearchConfig(num_beams=2))
    )
    result = pipeline(GenerationInput("hi"))
    assert len(result.token_ids) == 1 and result.token_ids[0] in everything and result.finish_reason == "eos"
