"""In-place KV-cache update on onnxruntime through IOBinding.

A plain ``session.run()`` never aliases a graph input with a graph output (ORT's
allocation planner keeps every graph input alive for the caller), so TensorScatter's
``MayInplace(0, 0)`` hint never fires and the whole cache is copied on every step
(``onnxruntime/core/providers/cpu/llm/tensorscatter.cc``). Binding the *same* OrtValue
as ``past_*`` input and ``present_*`` output makes the kernel write into the cache it
reads: only the new rows move.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

# Graph input -> graph output pairs that share one buffer (names of build.py).
CACHE_PAIRS = (("past_key", "present_key"), ("past_value", "present_value"))


# --8<-- [start:bind]
def bind_in_place(
    session: ort.InferenceSession,
    caches: Mapping[str, ort.OrtValue],
    feeds: Mapping[str, np.ndarray],
    outputs: Sequence[str] = (),
    pairs: Sequence[tuple[str, str]] = CACHE_PAIRS,
) -> ort.IOBinding:
    """An IOBinding where each ``(past, present)`` pair is bound to one OrtValue.

    ``caches`` maps the past input name to its OrtValue; ``feeds`` are the other
    inputs; ``outputs`` are the other outputs, left for ORT to allocate. The binding
    can be re-run with ``session.run_with_iobinding`` as long as shapes do not change.
    """
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(array))
    for past, present in pairs:
        binding.bind_ortvalue_input(past, caches[past])
        binding.bind_ortvalue_output(present, caches[past])  # same buffer: aliased
    for name in outputs:
        binding.bind_output(name)
    return binding


# --8<-- [end:bind]


@dataclass(frozen=True)
class InPlaceEvidence:
    """Where ``present_key`` lives after one step, with a plain run and with IOBinding."""

    plain_past_address: int
    plain_present_address: int
    bound_past_address: int
    bound_present_address: int
    outputs_equal: bool  # both ways give the same values

    @property
    def plain_copies(self) -> bool:
        return self.plain_present_address != self.plain_past_address

    @property
    def binding_in_place(self) -> bool:
        return self.bound_present_address == self.bound_past_address


# --8<-- [start:evidence]
def in_place_evidence(session: ort.InferenceSession, feeds: Mapping[str, np.ndarray]) -> InPlaceEvidence:
    """Run one step plainly and with IOBinding, and compare ``past_key``/``present_key`` addresses.

    ``feeds`` holds every graph input, ``past_key`` and ``past_value`` included.
    """
    output_names = [o.name for o in session.get_outputs()]
    plain_feeds = {name: np.ascontiguousarray(value) for name, value in feeds.items()}
    plain = dict(zip(output_names, session.run(None, plain_feeds), strict=True))

    # On CPU, ortvalue_from_numpy wraps the numpy buffer without copying it.
    caches = {past: ort.OrtValue.ortvalue_from_numpy(np.array(feeds[past], copy=True)) for past, _ in CACHE_PAIRS}
    presents = [present for _, present in CACHE_PAIRS]
    others = {name: value for name, value in feeds.items() if name not in caches}
    extra = [name for name in output_names if name not in presents]
    binding = bind_in_place(session, caches, others, extra)
    session.run_with_iobinding(binding)
    # Outputs come back in binding order: the aliased presents first, then the others.
    bound = dict(zip(presents + extra, binding.get_outputs(), strict=True))
    return InPlaceEvidence(
        plain_past_address=plain_feeds["past_key"].ctypes.data,
        plain_present_address=plain["present_key"].ctypes.data,
        bound_past_address=caches["past_key"].data_ptr(),
        bound_present_address=bound["present_key"].data_ptr(),
        outputs_equal=all(np.array_equal(plain[n], bound[n].numpy()) for n in output_names),
    )


# --8<-- [end:evidence]


# --8<-- [start:rule]
# When is it safe to bind past_* and present_* to one buffer? Aliasing turns the pure
# function "present = scatter(past, new)" into a write into past, so every reader of past
# must see past before the write, and nothing else may own that memory. A graph is safe for
# in-place binding when, for each (past, present) pair:
#   1. past's only reader is the one node that writes it: a TensorScatter's data input
#      (input 0), or after fusion a GroupQueryAttention's past_key/past_value: any other
#      reader sees the new rows when it runs after the write, and races it when it may run
#      alongside (a parallel executor is free to order unrelated nodes either way);
#   2. present is that writer's output, unchanged (no op between the writer and the graph
#      output), and no other graph output is the same value;
#   3. past is not itself a graph output (it would change under the caller);
#   4. past and present have the same element type and the same dims (a fixed capacity).
# And on the data side: slots no step has written must hold finite values (zeros): the
# masked read of Attention-24 still multiplies them by 0, and 0 * NaN is NaN.
# --8<-- [end:rule]


def _graph(model: onnx.ModelProto | ir.Model | ir.Graph) -> ir.Graph:
    if isinstance(model, onnx.ModelProto):
        model = ir.serde.deserialize_model(model)
    return model if isinstance(model, ir.Graph) else model.graph


# (op type, past input index, present output index) of the nodes that update a cache.
CACHE_WRITERS = (("TensorScatter", 0, 0), ("GroupQueryAttention", 3, 1), ("GroupQueryAttention", 4, 2))


def _writes(node: ir.Node, past: ir.Value, present: ir.Value) -> bool:
    return any(
        node.op_type == op and len(node.inputs) > i and node.inputs[i] is past and node.outputs[o] is present
        for op, i, o in CACHE_WRITERS
    )


def scatter_pairs(model: onnx.ModelProto | ir.Model | ir.Graph) -> list[tuple[str, str]]:
    """The (past, present) pairs a caller would alias: a graph input updated by a cache writer
    (TensorScatter, or GroupQueryAttention after fusion) whose output is a graph output."""
    graph = _graph(model)
    outputs = set(graph.outputs)
    return [
        (node.inputs[i].name, node.outputs[o].name)
        for node in graph
        for op, i, o in CACHE_WRITERS
        if node.op_type == op
        and len(node.inputs) > i
        and node.inputs[i] is not None
        and node.inputs[i].is_graph_input()
        and node.outputs[o] in outputs
    ]


# --8<-- [start:hazards]
def in_place_hazards(model: onnx.ModelProto | ir.Model, pairs: Sequence[tuple[str, str]] | None = None) -> list[str]:
    """One line per way the graph breaks the in-place rule above; empty when binding each
    ``(past, present)`` pair to one buffer computes what the graph says. ``pairs`` defaults
    to :func:`scatter_pairs`."""
    graph = _graph(model)
    inputs = {v.name: v for v in graph.inputs}
    outputs = {v.name: v for v in graph.outputs}
    problems = []
    for past_name, present_name in scatter_pairs(graph) if pairs is None else pairs:
        past, present = inputs.get(past_name), outputs.get(present_name)
        if past is None or present is None:
            problems.append(f"{past_name} -> {present_name}: not a graph input and a graph output")
            continue
        readers = [(use.node, use.idx) for use in past.uses()]
        writer = present.producer()
        if writer is None or not _writes(writer, past, present):
            what = "a graph input" if writer is None else f"{writer.op_type} {writer.name!r}"
            problems.append(f"{present_name} is produced by {what}, not by a cache writer of {past_name}")
        for node, idx in readers:
            if node is not writer:
                problems.append(f"{past_name} is also read by {node.op_type} {node.name!r} (input {idx})")
        if past in graph.outputs:
            problems.append(f"{past_name} is also a graph output")
        if sum(out is present for out in graph.outputs) > 1:
            problems.append(f"{present_name} is returned twice")
        if past.dtype != present.dtype or past.shape != present.shape:
            problems.append(
                f"{past_name} {past.dtype} {past.shape} and {present_name} {present.dtype} {present.shape} differ"
            )
    return problems


# --8<-- [end:hazards]
