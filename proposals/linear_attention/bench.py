"""Benchmark: one gated-delta decode step on onnxruntime CPU with the state bound in place
against copying it (``make bench``).

Float32, batch 1, one new token, d_k = d_v = 128, H heads (the state is H x 128 x 128):

- ``plain run``: ``session.run`` with numpy in and out (onnxruntime allocates present_state
  and hands back a new array every step);
- ``IOBinding, two buffers``: past and present bound to two OrtValues that swap roles each
  step (no host copies, no aliasing);
- ``IOBinding, one buffer``: past_state and present_state bound to one OrtValue;
- ``standard ops, no Scan``: the same T = 1 step as MatMul/Mul/Add on the state
  (:func:`build.gated_delta_decode_model`), two ping-ponged buffers: what a runtime could run
  for decode instead of the op's function body;
- ``one state copy``: ``numpy.copyto`` of one state, the cost of a single copy for scale.

The share of the hardware limit: a decode step must read and write the state at least once,
which is what one state copy does, so the limit is the copy's time, measured side by side in
the same run (a separate bandwidth probe is not: on a shared 2-core machine it measures the
neighbours), over the in-place step's time. Variants are timed interleaved in
one process; ratios are what to compare. Results: ``proposals/linear_attention/bench/*.json``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnxruntime as ort

from generator import bench
from generator.ort import session
from proposals.linear_attention import inplace
from proposals.linear_attention.build import gated_delta_decode_model, linear_attention_model

TOPIC = "linear_attention"
HEAD_DIM = 128
FULL_HEADS = (4, 16, 32, 64)
QUICK_HEADS = (2, 4)
IN_PLACE = "IOBinding, one buffer"
TWO_BUFFERS = "IOBinding, two buffers"
PLAIN = "plain run"
ONE_COPY = "one state copy"
NO_SCAN = "standard ops, no Scan"


def step_variants(heads: int, rng: np.random.RandomState) -> dict[str, Callable[[], object]]:
    """The decode step of a ``heads`` x 128 x 128 state, three ways, and one state copy."""
    layout = inplace.decode_layout(heads, HEAD_DIM)
    sess = session(linear_attention_model(layout))
    feeds = inplace.decode_feeds(layout, rng)
    state = (0.1 * rng.randn(1, heads, HEAD_DIM, HEAD_DIM)).astype(np.float32)
    plain_feeds = {**feeds, "past_state": state}

    shared = ort.OrtValue.ortvalue_from_numpy(state.copy())
    one = inplace.bind_state(sess, feeds, shared, shared)
    first, second = (ort.OrtValue.ortvalue_from_numpy(state.copy()) for _ in range(2))
    swap = [inplace.bind_state(sess, feeds, first, second), inplace.bind_state(sess, feeds, second, first)]
    turn = [0]

    def ping_pong() -> None:
        sess.run_with_iobinding(swap[turn[0]])
        turn[0] ^= 1

    direct = session(gated_delta_decode_model(layout))
    third, fourth = (ort.OrtValue.ortvalue_from_numpy(state.copy()) for _ in range(2))
    direct_swap = [inplace.bind_state(direct, feeds, third, fourth), inplace.bind_state(direct, feeds, fourth, third)]
    direct_turn = [0]

    def no_scan() -> None:
        direct.run_with_iobinding(direct_swap[direct_turn[0]])
        direct_turn[0] ^= 1

    # Same numbers both ways before anything is timed.
    expected = sess.run(None, plain_feeds)
    got = direct.run(None, plain_feeds)
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-5)

    target = np.empty_like(state)
    return {
        PLAIN: lambda: sess.run(None, plain_feeds),
        TWO_BUFFERS: ping_pong,
        IN_PLACE: lambda: sess.run_with_iobinding(one),
        NO_SCAN: no_scan,
        ONE_COPY: lambda: np.copyto(target, state),
    }


def measure(heads_list, **timing: float) -> list[dict]:
    """One row per state size: median seconds per step, ratios to the in-place step, and the
    in-place step's share of the read-once-write-once limit (one state copy)."""
    rows = []
    for heads in heads_list:
        times = bench.time_interleaved(step_variants(heads, np.random.RandomState(heads)), **timing)
        state_bytes = heads * HEAD_DIM * HEAD_DIM * 4
        rows.append(
            {
                "heads": heads,
                "state_bytes": state_bytes,
                "seconds": times,
                "ratios": bench.ratios(times, IN_PLACE),
                "share_of_limit": times[ONE_COPY] / times[IN_PLACE],
            }
        )
        print(
            f"H={heads:3d} state {state_bytes >> 10:6d} KiB "
            + "  ".join(f"{n}: {t * 1e6:9.1f} us" for n, t in times.items())
        )
    return rows


def main(quick: bool = False) -> None:
    """Measure; ``quick`` is a seconds-long smoke run that writes nothing."""
    heads_list = QUICK_HEADS if quick else FULL_HEADS
    timing = {"batches": 3, "min_batch_s": 0.002} if quick else {"batches": 11, "min_batch_s": 0.05}
    print("Gated-delta decode step (B=1, d_k=d_v=128, 1 token), ORT CPU:")
    rows = measure(heads_list, **timing)
    evidence = inplace.in_place_evidence(inplace.decode_layout(heads_list[-1], HEAD_DIM))
    profile = inplace.step_profile(inplace.decode_layout(heads_list[-1], HEAD_DIM))
    print(f"one buffer: {evidence}; profile: {profile}")
    if quick:
        return
    setup = {
        "batch": 1,
        "head_dim": HEAD_DIM,
        "update_rule": "gated_delta",
        "dtype": "float32",
        "new_tokens": 1,
        "threads": 2,
        "baseline": IN_PLACE,
        "onnxruntime": ort.__version__,
        **timing,
    }
    bench.write_json(TOPIC, "decode_step", rows, setup)
    bench.write_json(
        TOPIC,
        "in_place_profile",
        [{"op": op, **figures} for op, figures in profile.items()],
        {
            "heads": heads_list[-1],
            "head_dim": HEAD_DIM,
            "steps": 20,
            "onnxruntime": ort.__version__,
            "one_buffer_shared": evidence.shares_one_buffer,
            "output_matches": evidence.output_matches,
            "state_matches": evidence.state_matches,
        },
    )


if __name__ == "__main__":
    main()
