"""The recurrent state on onnxruntime: can ``past_state`` and ``present_state`` share one buffer?

onnxruntime 1.32 has no LinearAttention kernel: it expands the schema's context-dependent
function body (a Scan over the tokens; ``onnx/defs/nn/defs.cc``) and runs that. IOBinding
accepts one OrtValue bound as both ``past_state`` and ``present_state``; this module checks
whether the values stay right when it is, and where the time of a decode step goes.
"""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from generator.ort import session
from proposals.linear_attention.build import Layout, linear_attention_model

STATE = ("past_state", "present_state")


def decode_layout(heads: int, head_dim: int) -> Layout:
    """A Qwen3-Next-style gated-delta layer: per-head decay and rate, d_k = d_v."""
    return Layout("gated_delta", q_heads=heads, kv_heads=heads, d_k=head_dim, d_v=head_dim)


def decode_feeds(layout: Layout, rng: np.random.RandomState, batch: int = 1) -> dict[str, np.ndarray]:
    """One decode token's inputs (everything but ``past_state``)."""
    key = rng.randn(batch, 1, layout.kv_heads, layout.d_k)
    key /= np.linalg.norm(key, axis=-1, keepdims=True)
    return {
        "query": rng.randn(batch, 1, layout.q_heads * layout.d_k).astype(np.float32),
        "key": key.reshape(batch, 1, -1).astype(np.float32),
        "value": rng.randn(batch, 1, layout.kv_heads * layout.d_v).astype(np.float32),
        "decay": -np.abs(rng.randn(batch, 1, layout.kv_heads)).astype(np.float32) * 0.1,
        "beta": rng.uniform(0.1, 0.9, (batch, 1, layout.kv_heads)).astype(np.float32),
    }


# --8<-- [start:bind]
def bind_state(
    sess: ort.InferenceSession, feeds: Mapping[str, np.ndarray], past: ort.OrtValue, present: ort.OrtValue
) -> ort.IOBinding:
    """A re-runnable binding: ``past_state`` read from ``past``, ``present_state`` written into
    ``present`` (the same OrtValue for an in-place step), ``output`` allocated by onnxruntime."""
    binding = sess.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(array))
    binding.bind_ortvalue_input("past_state", past)
    binding.bind_ortvalue_output("present_state", present)
    binding.bind_output("output")
    return binding


# --8<-- [end:bind]


@dataclass(frozen=True)
class InPlaceEvidence:
    """One decode step run plainly and with ``past_state`` and ``present_state`` on one buffer."""

    state_address: int  # the shared OrtValue's buffer
    present_address: int  # where present_state was written when bound to it
    output_matches: bool  # the bound step's output equals the plain run's
    state_matches: bool  # the state left in the shared buffer equals the plain run's present_state

    @property
    def shares_one_buffer(self) -> bool:
        return self.state_address == self.present_address and self.output_matches and self.state_matches


def in_place_evidence(layout: Layout, seed: int = 0) -> InPlaceEvidence:
    rng = np.random.RandomState(seed)
    sess = session(linear_attention_model(layout))
    feeds = decode_feeds(layout, rng)
    past = (0.1 * rng.randn(1, layout.kv_heads, layout.d_k, layout.d_v)).astype(np.float32)
    output, present = sess.run(None, {**feeds, "past_state": past})
    shared = ort.OrtValue.ortvalue_from_numpy(past.copy())
    binding = bind_state(sess, feeds, shared, shared)
    sess.run_with_iobinding(binding)
    bound_present, bound_output = binding.get_outputs()
    return InPlaceEvidence(
        state_address=shared.data_ptr(),
        present_address=bound_present.data_ptr(),
        output_matches=bool(np.array_equal(bound_output.numpy(), output)),
        state_matches=bool(np.array_equal(shared.numpy(), present)),
    )


def step_profile(layout: Layout, steps: int = 20) -> dict[str, dict[str, float]]:
    """onnxruntime's own profile of ``steps`` in-place decode steps: per op type, how many
    kernel calls per step and their mean microseconds per step (Scan's body included)."""
    rng = np.random.RandomState(1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    with tempfile.TemporaryDirectory() as folder:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(folder) / "la")
        sess = ort.InferenceSession(
            linear_attention_model(layout).SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        shared = ort.OrtValue.ortvalue_from_numpy(np.zeros((1, layout.kv_heads, layout.d_k, layout.d_v), np.float32))
        binding = bind_state(sess, decode_feeds(layout, rng), shared, shared)
        for _ in range(steps):
            sess.run_with_iobinding(binding)
        events = json.loads(Path(sess.end_profiling()).read_text())
    calls: dict[str, int] = defaultdict(int)
    micros: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            op = event["args"]["op_name"]
            calls[op] += 1
            micros[op] += event["dur"]
    return {
        op: {"calls_per_step": calls[op] / steps, "us_per_step": micros[op] / steps}
        for op in sorted(micros, key=micros.get, reverse=True)
    }
