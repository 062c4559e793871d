"""The roofline arithmetic of the engines-side-by-side bench (``real_throughput.py``): a
sliding-window layer's cache holds at most its window, the paged engine reads whole blocks, and
the share is the time a step must take at the read bandwidth over the measured step, whatever the
batch. The paged engine, built as the bench builds it, decodes the in-place engine's tokens."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from generator.errors import UsageError
from proposals.text_pipeline import build_decoder
from proposals.text_pipeline.cache_formats import cache_buffers
from proposals.text_pipeline.families import tiny_model
from proposals.text_pipeline.folder import decoder_bytes
from proposals.text_pipeline.real_throughput import (
    PAGED,
    PAGED_BLOCK_SIZE,
    PER_ENGINE,
    _place,
    cache_bytes_held,
    cache_tokens_read,
    held_step,
    paged_runner,
    roofline,
)
from proposals.text_pipeline.report import greedy
from proposals.text_pipeline.runners import OrtRunner

ZOO_GEMMA3 = Path(__file__).resolve().parents[3] / "zoo" / "text_pipeline" / "test_gemma3_decoder" / "model.onnx"


def test_a_sliding_layer_holds_at_most_its_window() -> None:
    decoder = onnx.load(ZOO_GEMMA3)  # the zoo's tiny Gemma 3: layer 0 slides over 8 slots, layer 1 is linear
    per_token = {isinstance(b.dims[2], int): 0.0 for b in cache_buffers(decoder)}
    for b in cache_buffers(decoder):
        per_token[isinstance(b.dims[2], int)] += b.bytes_per_token()
    sliding, linear = per_token[True], per_token[False]
    assert sliding > 0 and linear > 0
    assert cache_bytes_held(decoder, 5) == 5 * (sliding + linear)
    assert cache_bytes_held(decoder, 100) == 8 * sliding + 100 * linear


def test_roofline_share_is_the_bound_step_over_the_measured_one() -> None:
    row = {
        "context": 96,
        "new_tokens": 8,
        "batch": 4,
        "decode_tokens_per_s": {"a": 40.0, PAGED: 80.0},  # a step of 0.1 s and of 0.05 s
        "weight_bytes": {"a": 1.5e9, PAGED: 0.5e9},
    }

    def bytes_read(engine: str, held: int) -> float:
        return 1e6 * cache_tokens_read(engine, held)

    shares = roofline(row, bytes_read, bandwidth_gbs=20.0)  # 100 tokens held mid-decode
    assert shares["a"] == pytest.approx((1.5e9 + 4 * 1e8) / 20e9 / 0.1)
    assert shares[PAGED] == pytest.approx((0.5e9 + 4 * 1.12e8) / 20e9 / 0.05)  # 7 blocks of 16


def test_the_paged_engine_reads_every_block_it_holds() -> None:
    assert PAGED_BLOCK_SIZE == 16
    assert [cache_tokens_read(PAGED, held) for held in (1, 16, 17, 100)] == [16, 16, 32, 112]
    assert cache_tokens_read("this pipeline, in place", 100) == 100


@pytest.mark.parametrize("batch", [1, 3])
def test_the_paged_engine_decodes_the_in_place_engines_tokens_in_a_pool_sized_for_the_cell(batch) -> None:
    """Built as the bench builds it (no spare block: 21 + 11 tokens fill 2 blocks of 16 per
    sequence), reused across runs as the bench's rounds reuse it."""
    decoder = onnx.load_from_string(decoder_bytes("llama"))  # seeded tiny Llama
    context, new = 21, 11
    runner = paged_runner(decoder, context, new, batch)
    assert runner.cache.manager.num_blocks == 2 * batch
    for salt in (0, 1):
        prompts = [[(11 * i + 5 * row + 37 * salt) % 300 + 3 for i in range(context)] for row in range(batch)]
        expected = greedy(OrtRunner(decoder), prompts, new)
        assert all(len(tokens) == new for tokens in expected)  # no early stop: every step compared
        assert greedy(runner, prompts, new) == expected


def test_the_paged_engine_refuses_a_ring_buffer_in_one_line() -> None:
    with pytest.raises(UsageError, match="needs a linear cache"):
        paged_runner(onnx.load(ZOO_GEMMA3), 16, 4, 1)


def _row(rates: dict[str, float], skipped: dict[str, str]) -> dict:
    return {
        "model": "m",
        "context": 128,
        "batch": 1,
        **{field: dict(rates) for field in PER_ENGINE},
        "skipped": skipped,
        "engine_groups": [sorted(rates)],
        "load_average": [1.0],
        "cell_seconds": 10.0,
    }


def test_a_second_group_of_engines_merges_into_the_cell_and_a_full_run_replaces_it() -> None:
    first = {**_row({"a": 1.0, "b": 2.0}, {"c": "not installed (c)"}), "cache_bytes_read": {"a": 5.0}}
    second = {**_row({"b": 3.0, "c": 4.0}, {}), "cache_bytes_read": {"c": 7.0}}
    other = {**_row({"a": 5.0}, {}), "context": 1024}
    merged = _place([first, other], second, merge=True)
    assert len(merged) == 2 and other in merged
    cell = next(r for r in merged if r["context"] == 128)
    assert cell["decode_tokens_per_s"] == {"a": 1.0, "b": 3.0, "c": 4.0}
    assert cell["skipped"] == {}  # c ran in the second group
    assert cell["engine_groups"] == [["a"], ["b", "c"]]
    assert cell["cache_bytes_read"] == {"a": 5.0, "c": 7.0}
    assert _place([first, other], second, merge=False) == [other, second]


def test_a_held_step_rewinds_to_the_same_slot_every_call() -> None:
    """decode_gap's repeated step: each call decodes as the first step after ``held`` tokens
    did, however far the runner had gone, and leaves ``held + 1`` tokens held."""
    runner = OrtRunner(build_decoder(tiny_model("llama")), threads=1)
    runner.start(1, 16)
    runner.append([[7, 8, 9, 10]])
    first = runner.append([[5]])  # the step after 4 tokens
    runner.append([[11]])  # the runner moves on; slot 5 now holds another token
    step = held_step(runner, 4)
    for _ in range(2):
        np.testing.assert_allclose(step(), first, rtol=1e-6, atol=1e-6)
        assert runner.lengths == [5]


@pytest.mark.parametrize(("kill", "said"), [(False, "exit status 3)"), (True, "out-of-memory killer")])
def test_an_engine_whose_process_died_is_skipped_with_its_exit_status(kill: bool, said: str) -> None:
    """A child that died while another engine ran (the OOM killer) makes its next turn a skip
    with one line, not a BrokenPipeError that ends the whole bench."""
    import multiprocessing
    import sys
    import time

    from proposals.text_pipeline.real_throughput import EngineProcess

    ctx = multiprocessing.get_context("fork")  # the child only exits or sleeps
    handle = EngineProcess.__new__(EngineProcess)
    handle.conn, child = ctx.Pipe()
    handle.process = ctx.Process(target=time.sleep if kill else sys.exit, args=(60 if kill else 3,), daemon=True)
    handle.process.start()
    child.close()
    if kill:
        handle.process.kill()
    handle.process.join()
    status, info = handle.ask([[1, 2, 3]])
    assert status == "skip" and said in info and "\n" not in info, (status, info)


def test_a_prompt_batch_whose_logits_would_not_fit_is_refused_in_one_line() -> None:
    from proposals.text_pipeline.real_throughput import logits_guard

    ran = []
    guarded = logits_guard(lambda ids: ran.append(ids) or (0.1, 0.2), vocab=1000, budget=2 * 10 * 1000 * 4)
    assert guarded([[1] * 10, [2] * 10]) == (0.1, 0.2)  # exactly the budget: runs
    with pytest.raises(UsageError, match=r"^its prefill returns float32 logits .* for 2 x 11 tokens") as err:
        guarded([[1] * 11, [2] * 3])
    assert "\n" not in str(err.value) and len(ran) == 1
