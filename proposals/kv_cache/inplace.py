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
