"""Decoder runners (``generation.Runner``): append tokens to each sequence of a batch, return
next-token logits.

A runner owns the KV cache. ``OrtRunner`` runs the opset-24 decoder with onnxruntime:
the cache is one numpy buffer per layer and direction, bound through IOBinding as both
``past_*`` and ``present_*`` so TensorScatter updates it in place (``inplace=False`` runs
plain ``session.run`` instead, which copies the cache every step: the bench baseline).
``TorchRunner`` runs the transformers module with its own cache: the reference.

A ring cannot take a chunk of several tokens once it has wrapped: the chunk's last keys
would overwrite slots its first queries still need. A mixed decoder (Gemma 2/3) therefore
prefills a prompt that passes its window through a second session, the masked-linear form
of the same graph (``masked_window.masked_prefill``), on linear scratch buffers for the
sliding layers; each ring then takes the last ``window`` entries. A decoder whose every
layer slides (Mistral) still goes token by token past its window.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from generator.errors import UsageError
from generator.ort import ERROR, WARNING, session
from proposals.text_pipeline.build import DecoderSpec, spec_from_model
from proposals.text_pipeline.cache_formats import CacheBuffer, cache_buffers


# --8<-- [start:ort_runner]
class OrtRunner:
    """onnxruntime CPU runner with the cache updated in place through IOBinding."""

    def __init__(
        self,
        model: onnx.ModelProto,
        *,
        inplace: bool = True,
        threads: int = 2,
        external_data: Path | None = None,
        spinning: bool = False,
    ) -> None:
        self.spec: DecoderSpec = spec_from_model(model)
        self.buffers = cache_buffers(model)  # past_* inputs: names, element types, dims
        # The copying runner is the bench's baseline: it copies the cache on purpose, so
        # onnxruntime's TensorScatter copy warning would repeat at every step.
        self.session = session(
            model,
            threads=threads,
            log_severity=WARNING if inplace else ERROR,
            external_data=external_data,
            spinning=spinning,
        )
        self.model, self.threads, self.external_data = model, threads, external_data
        self._prefill_session: ort.InferenceSession | None = None  # built on the first prompt past a window
        self.inplace = inplace
        self.vocab_size = self.spec.vocab_size
        self.max_positions = self.spec.max_positions
        self.lengths: list[int] = []
        self.caches: dict[str, np.ndarray] = {}

    def start(self, batch: int, capacity: int) -> None:
        length = min(capacity, self.max_positions)
        # One zeroed buffer per cache input, of the graph's element type and length: float32 as
        # built, or a KV-cache format's codes and scale caches (cache_formats); a circular
        # layer's buffer keeps its window length.
        self.caches = {b.name: np.zeros(b.shape(batch, length), b.numpy_dtype) for b in self.buffers}
        self._bindings: dict[tuple, tuple] = {}
        self.lengths = [0] * batch
        self.capacity = length if self.spec.linear else self.max_positions

    def append(self, tokens: Sequence[Sequence[int]]) -> np.ndarray:
        counts = {len(t) for t in tokens}
        if counts == {1}:
            return self._step(np.asarray(tokens, np.int64), slice(None))
        # Prefill of ragged lengths: one batch-1 run per sequence on a view of the shared
        # cache (no padding); circular caches go token by token once past the window.
        rows = []
        for row, seq in enumerate(tokens):
            if self._prefills_masked(row, len(seq)):
                rows.append(self._prefill_masked(row, list(seq)))
                continue
            for chunk in self._chunks(row, list(seq)):
                last = self._step(np.asarray([chunk], np.int64), slice(row, row + 1))
            rows.append(last[0])
        return np.stack(rows)

    def _prefills_masked(self, row: int, count: int) -> bool:
        """A float32 mixed decoder given tokens that pass its window (a quantized cache
        format keeps the token-by-token path: its scale buffers are not rings to unroll)."""
        return (
            count > 1
            and self.spec.mixed
            and self.lengths[row] + count > self.spec.sliding_window
            and all(b.numpy_dtype == np.float32 for b in self.buffers)
        )

    def _prefill_masked(self, row: int, seq: list[int]) -> np.ndarray:
        """``seq`` appended to sequence ``row`` through the masked-linear session, in chunks
        of the window; returns the last token's logits."""
        from proposals.text_pipeline.masked_window import masked_prefill

        start, end, window = self.lengths[row], self.lengths[row] + len(seq), self.spec.sliding_window
        if end > self.capacity:
            raise UsageError(f"{end} tokens exceed the cache capacity {self.capacity}")
        if self._prefill_session is None:
            self._prefill_session = session(
                masked_prefill(self.model), threads=self.threads, external_data=self.external_data
            )
        rows = slice(row, row + 1)
        length = next(c.shape[2] for b, c in zip(self.buffers, self.caches.values(), strict=True) if not _ring(b))
        scratch = {
            b.name: np.zeros((1, *b.dims[1:2], length, *b.dims[3:]), np.float32) for b in self.buffers if _ring(b)
        }
        held = np.arange(max(0, start - window), start)  # what each ring holds now, as linear positions
        for name, buffer in scratch.items():
            buffer[:, :, held] = self.caches[name][rows][:, :, held % window]
        binding = self._prefill_session.io_binding()
        binding.bind_output("logits")  # first, so it is get_outputs()[0]
        _alive = _bind_in_place(
            binding, {n: scratch[n] if n in scratch else c[rows] for n, c in self.caches.items()}
        )  # kept beside the binding
        for at in range(start, end, window):
            ids = np.asarray([seq[at - start : at - start + window]], np.int64)
            binding.bind_cpu_input("input_ids", ids)
            binding.bind_cpu_input("write_indices", np.asarray([at], np.int64))
            binding.bind_output("logits")
            self._prefill_session.run_with_iobinding(binding)
        kept = np.arange(max(0, end - window), end)
        for name, buffer in scratch.items():
            self.caches[name][row, :, kept % window] = buffer[0, :, kept]
        self.lengths[row] = end
        return binding.get_outputs()[0].numpy()[0, -1]

    def _chunks(self, row: int, seq: list[int]) -> list[list[int]]:
        if not seq:
            raise UsageError("append_input_tokens got an empty token list for a sequence")
        if not self.spec.circular:
            return [seq]
        # A chunk may fill the window linearly; after that, wrapping chunks would break
        # the causal order inside the buffer, so later tokens go one at a time.
        head = max(0, min(len(seq), self.spec.sliding_window - self.lengths[row]))
        return ([seq[:head]] if head else []) + [[t] for t in seq[head:]]

    def _step(self, ids: np.ndarray, rows: slice) -> np.ndarray:
        starts = np.asarray(self.lengths[rows], np.int64)
        if starts.max() + ids.shape[1] > self.capacity:
            raise UsageError(f"{starts.max() + ids.shape[1]} tokens exceed the cache capacity {self.capacity}")
        logits = self._run_inplace(ids, starts, rows) if self.inplace else self._run_copy(ids, starts, rows)
        for r in range(*rows.indices(len(self.lengths))):
            self.lengths[r] += ids.shape[1]
        return logits[:, -1, :]

    def _run_inplace(self, ids: np.ndarray, starts: np.ndarray, rows: slice) -> np.ndarray:
        if ids.shape[1] == 1:
            return self._decode_inplace(ids, starts, rows)
        binding = self._binding(rows)
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("write_indices", starts)
        binding.bind_output("logits")  # unallocated again: its shape changes with seq
        self.session.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy()

    def _binding(self, rows: slice) -> ort.IOBinding:
        """An IOBinding with every cache bound as both past and present (kept per row range:
        rebinding eight OrtValues each decode step would cost more than it saves)."""
        key = (rows.start, rows.stop)
        if key not in self._bindings:
            binding = self.session.io_binding()
            binding.bind_output("logits")  # first, so it is get_outputs()[0]
            values = _bind_in_place(binding, {name: cache[rows] for name, cache in self.caches.items()})
            self._bindings[key] = (binding, values)
        return self._bindings[key][0]

    def _decode_inplace(self, ids: np.ndarray, starts: np.ndarray, rows: slice) -> np.ndarray:
        """One token per sequence: the ids, the write indices and the logits are numpy
        buffers bound once per row range (beside the caches), so a step writes two small
        arrays and runs; nothing is allocated or rebound per step."""
        key = ("decode", rows.start, rows.stop)
        if key not in self._bindings:
            batch = len(range(*rows.indices(len(self.lengths))))
            buffers = (
                np.zeros((batch, 1), np.int64),
                np.zeros(batch, np.int64),
                np.zeros((batch, 1, self.vocab_size), np.float32),
            )
            binding = self.session.io_binding()
            values = [ort.OrtValue.ortvalue_from_numpy(a) for a in buffers]  # views of the buffers
            binding.bind_ortvalue_input("input_ids", values[0])
            binding.bind_ortvalue_input("write_indices", values[1])
            binding.bind_ortvalue_output("logits", values[2])
            values += _bind_in_place(binding, {name: cache[rows] for name, cache in self.caches.items()})
            self._bindings[key] = (binding, values, buffers)
        binding, _, (ids_buffer, starts_buffer, logits) = self._bindings[key]
        ids_buffer[...] = ids
        starts_buffer[...] = starts
        self.session.run_with_iobinding(binding)
        return logits.copy()  # the next step overwrites the buffer

    def _run_copy(self, ids: np.ndarray, starts: np.ndarray, rows: slice) -> np.ndarray:
        """Plain ``session.run``: ORT allocates each present buffer and copies the past into it
        (TensorScatter cannot alias a graph input), and the present becomes the next past."""
        whole = rows == slice(None)
        feeds = {"input_ids": ids, "write_indices": starts}
        feeds.update({f"past_{n}": c if whole else c[rows] for n, c in self.caches.items()})
        outputs = self.session.run(None, feeds)
        names = [o.name for o in self.session.get_outputs()]
        for name, value in zip(names, outputs, strict=True):
            if name.startswith("present_"):
                key = name.removeprefix("present_")
                if whole:
                    self.caches[key] = value
                else:
                    self.caches[key][rows] = value
        return outputs[names.index("logits")]

    def reorder(self, rows: Sequence[int]) -> None:
        index = np.asarray(rows)
        for cache in self.caches.values():
            cache[...] = cache[index]  # fancy indexing copies first; the bound buffers stay
        self.lengths = [self.lengths[r] for r in rows]


# --8<-- [end:ort_runner]


def _bind_in_place(binding: ort.IOBinding, caches: dict[str, np.ndarray]) -> list[ort.OrtValue]:
    """Each cache bound as both ``past_<name>`` and ``present_<name>``, one OrtValue over the
    numpy buffer, so TensorScatter writes in place; the values, to keep alive beside the binding."""
    values = [ort.OrtValue.ortvalue_from_numpy(cache) for cache in caches.values()]
    for name, value in zip(caches, values, strict=True):
        binding.bind_ortvalue_input(f"past_{name}", value)
        binding.bind_ortvalue_output(f"present_{name}", value)
    return values


def _ring(buffer: CacheBuffer) -> bool:
    """A sliding layer's circular buffer: its length is fixed (the window)."""
    return not buffer.recurrent and isinstance(buffer.dims[2], int)


class TorchRunner:
    """transformers reference runner: one model call per sequence, each with its own cache
    (no padding, so no attention mask to get wrong)."""

    def __init__(self, hf_model) -> None:
        self.model = hf_model.eval()
        self.vocab_size = hf_model.config.vocab_size
        self.max_positions = hf_model.config.max_position_embeddings
        self.lengths: list[int] = []
        self.caches: list[object] = []

    def start(self, batch: int, capacity: int) -> None:
        self.lengths = [0] * batch
        self.caches = [None] * batch
        self.capacity = min(capacity, self.max_positions)

    def append(self, tokens: Sequence[Sequence[int]]) -> np.ndarray:
        import torch

        rows = []
        with torch.no_grad():
            for row, seq in enumerate(tokens):
                if self.lengths[row] + len(seq) > self.capacity:  # as OrtRunner: no silent overflow
                    raise UsageError(f"{self.lengths[row] + len(seq)} tokens exceed the cache capacity {self.capacity}")
                out = self.model(input_ids=torch.tensor([list(seq)]), cache=self.caches[row], use_cache=True)
                self.caches[row] = out.cache
                self.lengths[row] += len(seq)
                rows.append(out.logits[0, -1].float().numpy())
        return np.stack(rows)

    def reorder(self, rows: Sequence[int]) -> None:
        self.caches = [copy.deepcopy(self.caches[r]) for r in rows]
        self.lengths = [self.lengths[r] for r in rows]
