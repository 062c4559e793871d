"""Serving on the paged decoder: many requests at once, blocks allocated on demand.

The decoder is the linear-cache decoder of ``build.py`` after the paged-attention
proposal's ``LinearToPaged`` rewrite: each layer's cache is a pool of blocks
``[num_blocks, block_size, kv_heads, head_dim]``, written through ``slot_mapping`` and
read through ``block_table``. Three layers sit on it:

* ``PagedCache``: the rewritten decoder on onnxruntime, its pools bound once as both
  input and output (ScatterND writes the new tokens in place), and the topic's
  ``BlockManager`` that decides which block every token goes to;
* ``PagedServer``: the serving loop, ``submit`` / ``step`` / ``collect``, with continuous
  batching (requests join between steps), prefix sharing, waiting when the pool is full
  and preemption by recomputation when a running request needs a block none is free for;
* ``PagedRunner``: a ``generation.Runner`` on the same cache, so the WG ``Generator``
  (and beam search, whose forks are copy-on-write) runs on it unchanged: the
  ``onnxruntime-paged`` backend of ``create_pipeline``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from generator.errors import UsageError
from generator.onnx_build import seeded
from generator.ort import session
from proposals.paged_attention.blocks import BlockManager
from proposals.paged_attention.rewrite import BLOCK_TABLE, SLOT_MAPPING, to_paged
from proposals.text_pipeline import reference
from proposals.text_pipeline.build import DecoderSpec, refuse_recurrent, spec_from_model
from proposals.text_pipeline.config import GenerationConfig
from proposals.text_pipeline.reference import Decode, check_context

DEFAULT_BLOCK_SIZE = 16


@dataclass(frozen=True)
class Feed:
    """One sequence's part of a run: the K/V of ``history[-count:]`` is written, and the
    logits after ``history[-1]`` come back."""

    seq: int
    history: Sequence[int]
    count: int


class PagedCache:
    """The paged decoder on onnxruntime CPU with its block pools updated in place."""

    def __init__(
        self,
        decoder: onnx.ModelProto,
        num_blocks: int,
        block_size: int = DEFAULT_BLOCK_SIZE,
        *,
        threads: int = 2,
        share_prefixes: bool = True,
        external_data: Path | None = None,
    ) -> None:
        self.spec: DecoderSpec = spec_from_model(decoder)
        if self.spec.circular:
            raise UsageError(
                f"the paged backend needs a linear cache; this {self.spec.model_type} decoder slides a "
                f"{self.spec.sliding_window}-token window (circular buffer)"
            )
        # a recurrent state is one per sequence: no blocks to page, no prefix to share
        refuse_recurrent(self.spec, "onnxruntime-paged", "pages KV caches only")
        self.manager = BlockManager(num_blocks, block_size, share_prefixes=share_prefixes)
        paged = to_paged(decoder, num_blocks=num_blocks, block_size=block_size)
        self.session = session(paged, threads=threads, external_data=external_data)
        shape = (num_blocks, block_size, self.spec.num_kv_heads, self.spec.head_dim)
        layers = range(self.spec.num_layers)
        self.pools = {f"{kind}_cache.{i}": np.zeros(shape, np.float32) for i in layers for kind in ("key", "value")}
        self.binding = self.session.io_binding()
        self.binding.bind_output("logits")  # first, so it is get_outputs()[0]
        self._values = []  # kept alive beside the binding
        for name, pool in self.pools.items():
            # One OrtValue as both the pool input and its updated output: ScatterND writes in place.
            value = ort.OrtValue.ortvalue_from_numpy(pool)
            self.binding.bind_ortvalue_input(name, value)
            self.binding.bind_ortvalue_output(name.replace("_cache.", "_cache_out."), value)
            self._values.append(value)

    @property
    def block_size(self) -> int:
        return self.manager.block_size

    # --8<-- [start:feed]
    def feed(self, feeds: Sequence[Feed]) -> np.ndarray:
        """Run the decoder once per group of feeds: every one-token feed (decode) in one
        batch, every longer one (a prefill) alone, so no sequence is padded. Blocks are
        allocated (and shared ones copied before a write) first, full blocks registered
        for prefix sharing after. Returns the next-token logits, ``[len(feeds), vocab]``."""
        logits = np.empty((len(feeds), self.spec.vocab_size), np.float32)
        decode = [i for i, f in enumerate(feeds) if f.count == 1]
        groups = ([decode] if decode else []) + [[i] for i, f in enumerate(feeds) if f.count > 1]
        for group in groups:
            logits[group] = self._run([feeds[i] for i in group])
        return logits

    def _run(self, feeds: Sequence[Feed]) -> np.ndarray:
        size = self.block_size
        for f in feeds:
            past = len(f.history) - f.count
            self.manager.grow(f.seq, len(f.history))
            self.copy_blocks(self.manager.writable(f.seq, past, len(f.history)))
        rows = [self.manager.tables[f.seq] for f in feeds]
        table = np.full((len(feeds), max(map(len, rows))), -1, np.int64)  # -1: never read (masked)
        slots = np.empty((len(feeds), feeds[0].count), np.int64)
        for b, (f, row) in enumerate(zip(feeds, rows, strict=True)):
            table[b, : len(row)] = row
            positions = np.arange(len(f.history) - f.count, len(f.history))
            slots[b] = np.asarray(row)[positions // size] * size + positions % size
        self.binding.bind_cpu_input("input_ids", np.asarray([f.history[-f.count :] for f in feeds], np.int64))
        self.binding.bind_cpu_input("write_indices", np.asarray([len(f.history) - f.count for f in feeds], np.int64))
        self.binding.bind_cpu_input(BLOCK_TABLE, table)
        self.binding.bind_cpu_input(SLOT_MAPPING, slots)
        self.binding.bind_output("logits")  # unallocated again: its shape changes with the run
        self.session.run_with_iobinding(self.binding)
        for f in feeds:
            self.manager.register_full(f.seq, f.history)
        return self.binding.get_outputs()[0].numpy()[:, -1, :]

    # --8<-- [end:feed]

    def copy_blocks(self, copies: Sequence[tuple[int, int]]) -> None:
        """Copy-on-write: block ``source`` into ``destination`` in every layer's pools."""
        for source, destination in copies:
            for pool in self.pools.values():
                pool[destination] = pool[source]


@dataclass
class Request:
    """One request's state in the server."""

    id: int
    prompt: list[int]
    config: GenerationConfig
    budget: int  # new tokens it may generate
    rng: np.random.RandomState
    tokens: list[int] = field(default_factory=list)  # prompt + generated
    cached: int = 0  # tokens whose K/V is in its blocks
    finish_reason: str | None = None
    preemptions: int = 0

    @property
    def new_tokens(self) -> list[int]:
        return self.tokens[len(self.prompt) :]


@dataclass(frozen=True)
class Finished:
    """A finished request: its new tokens and why it stopped (``"eos"``, ``"stop_string"``,
    ``"length"``, or ``"error"`` when its run or its sampling failed; the others go on)."""

    id: int
    prompt: tuple[int, ...]
    new_tokens: tuple[int, ...]
    finish_reason: str
    preemptions: int  # times its blocks were taken back and its tokens recomputed
    error: str = ""  # finish_reason "error": what failed, in one line


@dataclass(frozen=True)
class StepStats:
    """What one ``step`` did (the bench's measurements come from these)."""

    running: int  # sequences holding blocks after the step
    waiting: int
    blocks_used: int
    tokens_cached: int  # K/V slots holding a token, over every running sequence (shared ones once)
    generated: int  # tokens produced by this step


def token_ids(prompt: object, vocab_size: int) -> list[int]:
    """A request's prompt as a list of ints: a non-empty sequence (or 1-D integer array) of
    whole numbers in the vocabulary; a float such as 1.7 is refused, never truncated."""
    if isinstance(prompt, np.ndarray):
        ok = prompt.ndim == 1 and prompt.dtype.kind in "iu"
        prompt = prompt.tolist() if ok else [prompt]
    if isinstance(prompt, str | bytes) or not isinstance(prompt, Sequence):
        prompt = [prompt]
    ids = [int(t) if isinstance(t, int | np.integer) and not isinstance(t, bool) else None for t in prompt]
    if not ids or None in ids or not all(0 <= t < vocab_size for t in ids):
        shown = ", ".join(repr(t) for t in list(prompt)[:5])
        raise UsageError(f"a request needs a non-empty list of integer token ids in [0, {vocab_size}); got [{shown}]")
    return ids


# --8<-- [start:server]
class PagedServer:
    """Continuous batching on one ``PagedCache``: ``submit`` requests at any time, ``step``
    produces one token for every running request (admitting waiting ones first while their
    prompt's blocks fit), ``collect`` hands back the finished ones."""

    def __init__(self, cache: PagedCache, *, decode: Decode | None = None, watermark: int = 0) -> None:
        if not isinstance(watermark, int) or not 0 <= watermark < cache.manager.num_blocks:
            raise UsageError(
                f"watermark is a count of free blocks in [0, {cache.manager.num_blocks}), got {watermark!r}"
            )
        self.cache, self.decode = cache, decode
        self.watermark = watermark  # blocks admission leaves free for the running requests to grow into
        self.recomputed_tokens = 0  # cached tokens thrown away by preemption (computed again)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order; the last is preempted first
        self.finished: dict[int, Finished] = {}
        self.stats: list[StepStats] = []
        self._next_id = 0

    def submit(self, prompt: Sequence[int], config: GenerationConfig) -> int:
        """Queue a request; refused (UsageError) when it could never fit the model or the pool."""
        spec, manager = self.cache.spec, self.cache.manager
        prompt = token_ids(prompt, spec.vocab_size)
        if not isinstance(config, GenerationConfig):
            raise UsageError(f"a request needs a GenerationConfig, got {type(config).__name__}")
        beyond = sorted(t for t in config.eos_token_ids if t >= spec.vocab_size)
        if beyond:
            raise UsageError(
                f"eos_token_ids {beyond[:5]} are not in the model's vocabulary [0, {spec.vocab_size}); "
                "give ids the model can produce"
            )
        if config.beam_search_config.num_beams != 1:
            raise UsageError("the server does greedy or sampled decoding; beam search runs through create_pipeline")
        check_context([len(prompt)], spec.max_positions)
        budget = config.new_token_budget(len(prompt))
        budget = spec.max_positions - len(prompt) if budget is None else budget
        # the last new token is never fed back, so its K/V never needs a slot
        most = manager.blocks_for(min(len(prompt) + budget - 1, spec.max_positions))
        if most > manager.num_blocks:
            raise UsageError(
                f"the request may need {most} blocks of {manager.block_size} tokens "
                f"({len(prompt)} prompt + {budget} new); the pool has {manager.num_blocks}: "
                "lower max_new_tokens or use a larger pool"
            )
        request = Request(self._next_id, list(prompt), config, budget, seeded(config.sampling_config.rng_seed))
        request.tokens = list(prompt)
        self._next_id += 1
        if budget == 0:
            self._finish(request, "length")
        else:
            self.waiting.append(request)
        return request.id

    def step(self) -> list[int]:
        """One token for every running request; returns the ids that finished."""
        if not self.waiting and not self.running:
            raise UsageError("step called with no request submitted or running; submit one first")
        self._make_room()
        decoding = list(self.running)  # each has one token to feed: its last new one
        done: list[int] = []
        produced = self._admit(done)  # each joins with its prompt prefilled
        if decoding:
            produced += self._decode(decoding, done)
        for request, row in produced:
            request.cached = len(request.tokens)
            try:
                finished = self._choose(request, row) is not None
            except Exception as err:  # noqa: BLE001 - one request's failure must not stop the others
                self._fail(request, err)
                finished = True
            if finished:
                self._leave(request)
                done.append(request.id)
        self._record(len(produced))
        return done

    def _decode(self, decoding: list[Request], done: list[int]) -> list[tuple[Request, np.ndarray]]:
        """One batched decode run; if it fails, each request alone, so only the one whose run
        fails is finished (with an error) and the others go on. A rerun rewrites the same slots."""
        try:
            logits = self.cache.feed([Feed(r.id, r.tokens, 1) for r in decoding])
            return list(zip(decoding, logits, strict=True))
        except Exception:  # noqa: BLE001 - find the request it belongs to
            pass
        produced = []
        for request in decoding:
            try:
                produced.append((request, self.cache.feed([Feed(request.id, request.tokens, 1)])[0]))
            except Exception as err:  # noqa: BLE001
                self._fail(request, err)
                self._leave(request)
                done.append(request.id)
        return produced

    def _leave(self, request: Request) -> None:
        """A finished request gives its blocks back."""
        self.running.remove(request)
        self.cache.manager.release(request.id)

    def _fail(self, request: Request, err: BaseException) -> None:
        from generator.verify import first_line

        self._finish(request, "error", first_line(err))

    def _make_room(self) -> None:
        """Each running request is about to write one token: if the pool has no block for
        one that needs it, take back the blocks of the latest admitted (recomputed later)."""
        manager = self.cache.manager
        for request in list(self.running):
            while request in self.running and not manager.can_grow(request.id, len(request.tokens)):
                self._preempt(self.running[-1])
            if request in self.running:
                manager.grow(request.id, len(request.tokens))  # now, so admission cannot take it

    def _admit(self, done: list[int]) -> list[tuple[Request, np.ndarray]]:
        """First come, first served: the head of the queue joins while its blocks fit, and
        its prefill runs at once, so the next request can share the blocks it fills. A
        prefill that fails finishes its request with an error (ids appended to ``done``)."""
        manager, joined = self.cache.manager, []
        while self.waiting:
            request = self.waiting[0]
            shared = manager.admit(request.id, request.tokens)
            reserve = self.watermark * manager.block_size if self.running else 0
            if not manager.can_grow(request.id, len(request.tokens) + reserve):
                manager.release(request.id)
                break
            request.cached = shared  # the shared prefix's K/V is already in its blocks
            self.running.append(self.waiting.popleft())
            try:
                logits = self.cache.feed([Feed(request.id, request.tokens, len(request.tokens) - shared)])
            except Exception as err:  # noqa: BLE001 - one request's failure must not stop the others
                self._fail(request, err)
                self._leave(request)
                done.append(request.id)
                continue
            joined.append((request, logits[0]))
        return joined

    # --8<-- [end:server]

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.cache.manager.release(request.id)
        self.recomputed_tokens += request.cached
        request.cached, request.preemptions = 0, request.preemptions + 1
        self.waiting.appendleft(request)

    def _choose(self, request: Request, logits: np.ndarray) -> str | None:
        """The next token by the shared sampling rules; the finish reason, once finished."""
        new = request.new_tokens
        processed = reference.process(logits[None], [request.tokens], [len(new)], request.config)
        token = int(reference.choose(processed, request.config.sampling_config, request.rng)[0])
        request.tokens.append(token)
        full = len(request.tokens) >= self.cache.spec.max_positions
        reason = reference.finish_reason(
            request.new_tokens, request.config, self.decode, request.budget, cache_full=full
        )
        if reason is not None:
            self._finish(request, reason)
        return reason

    def _finish(self, request: Request, reason: str, error: str = "") -> None:
        request.finish_reason = reason
        self.finished[request.id] = Finished(
            request.id, tuple(request.prompt), tuple(request.new_tokens), reason, request.preemptions, error
        )

    def _record(self, generated: int) -> None:
        manager = self.cache.manager
        size = manager.block_size
        filled: dict[int, int] = {}  # block -> slots holding a token (a shared block counted once)
        for r in self.running:
            for index, block in enumerate(manager.tables[r.id]):
                filled[block] = max(filled.get(block, 0), min(size, r.cached - index * size))
        tokens = sum(filled.values())
        self.stats.append(StepStats(len(self.running), len(self.waiting), manager.used, tokens, generated))

    def collect(self) -> list[Finished]:
        """The requests finished since the last call, in id order (and forgets them)."""
        out = [self.finished[i] for i in sorted(self.finished)]
        self.finished.clear()
        return out

    def run(self) -> list[Finished]:
        """Step until every submitted request has finished; all of them, in id order."""
        while self.waiting or self.running:
            self.step()
        return self.collect()


class PagedRunner:
    """``generation.Runner`` on a ``PagedCache``: the WG ``Generator`` and beam search run on
    the paged decoder unchanged. Sequence ``i`` of the batch is block-manager sequence ``i``;
    a fresh sequence starts on the blocks of any prefix already in the pool, and
    ``reorder`` (beam search) forks block tables, copied on write."""

    def __init__(self, cache: PagedCache) -> None:
        self.cache = cache
        self.vocab_size = cache.spec.vocab_size
        self.max_positions = cache.spec.max_positions
        self.histories: list[list[int]] = []
        self.capacity = 0

    @property
    def lengths(self) -> list[int]:
        return [len(h) for h in self.histories]

    def start(self, batch: int, capacity: int) -> None:
        for seq in range(len(self.histories)):
            self.cache.manager.release(seq)
        self.histories = [[] for _ in range(batch)]
        self.capacity = min(capacity, self.max_positions)

    def append(self, tokens: Sequence[Sequence[int]]) -> np.ndarray:
        for seq, new in enumerate(tokens):
            if not new:
                raise UsageError("append_input_tokens got an empty token list for a sequence")
            if len(self.histories[seq]) + len(new) > self.capacity:
                raise UsageError(
                    f"{len(self.histories[seq]) + len(new)} tokens exceed the cache capacity {self.capacity}"
                )
        if {len(t) for t in tokens} == {1} and all(self.histories):
            return self._feed([(seq, 1) for seq in range(len(tokens))], tokens)
        # prefills one sequence at a time, so a later one can share the blocks an earlier one filled
        return np.concatenate([self._feed([(seq, len(new))], [new]) for seq, new in enumerate(tokens)])

    def _feed(self, rows: list[tuple[int, int]], tokens: Sequence[Sequence[int]]) -> np.ndarray:
        manager, feeds = self.cache.manager, []
        for (seq, count), new in zip(rows, tokens, strict=True):
            history = self.histories[seq]
            fresh = not history
            history.extend(int(t) for t in new)
            if fresh:
                count = len(history) - manager.admit(seq, history)
            feeds.append(Feed(seq, history, count))
        return self.cache.feed(feeds)

    def reorder(self, rows: Sequence[int]) -> None:
        manager, batch = self.cache.manager, len(self.histories)
        for child, parent in enumerate(rows):  # forks under spare ids first: rows may repeat
            manager.fork(parent, batch + child)
        for seq in range(batch):
            manager.release(seq)
            manager.tables[seq] = manager.tables.pop(batch + seq)
        self.histories = [list(self.histories[r]) for r in rows]
