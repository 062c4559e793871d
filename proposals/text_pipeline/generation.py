"""The generation loop: ``Text2Text::Generator`` over any runner, and beam search.

``Generator`` is the WG's incremental interface (``AppendInputTokens`` /
``GenerateNextToken`` / ``IsDone``) for a batch of sequences: it holds no model code. The
logits processors and the stopping rules come from ``reference``, so every backend that
provides a runner gets identical semantics; ``RunnerEngine`` is what such a backend hands
to ``Pipeline``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from generator.errors import UsageError
from generator.onnx_build import seeded
from proposals.text_pipeline import reference
from proposals.text_pipeline.config import GenerationConfig, StopCriteria
from proposals.text_pipeline.reference import Decode, check_context, finish_reason


@dataclass
class SequenceState:
    """One sequence's state: its history, what it generated and why it stopped."""

    history: list[int] = field(default_factory=list)
    new_tokens: list[int] = field(default_factory=list)
    prompt_len: int = 0
    finish_reason: str | None = None


class Runner(Protocol):
    """What the generation loop needs from a backend: a decoder that owns its KV cache."""

    lengths: list[int]  # tokens in each sequence so far
    capacity: int  # tokens one sequence may hold, set by start()
    vocab_size: int
    max_positions: int

    def start(self, batch: int, capacity: int) -> None:
        """Empty caches for ``batch`` sequences of up to ``capacity`` tokens."""

    def append(self, tokens: Sequence[Sequence[int]]) -> np.ndarray:
        """Feed tokens to every sequence (same count per sequence, or a prefill of any
        lengths); return the logits after each sequence's last token, ``[batch, vocab]``."""

    def reorder(self, rows: Sequence[int]) -> None:
        """Make sequence ``i`` a copy of sequence ``rows[i]`` (beam search)."""


# --8<-- [start:generator]
class Generator:
    """``Text2Text::Generator`` for a batch: feed prompts, then pull one token per step."""

    def __init__(
        self,
        runner: Runner,
        config: GenerationConfig,
        *,
        decode: Decode | None = None,
        batch_size: int = 1,
    ) -> None:
        if config.beam_search_config.num_beams != 1:
            raise UsageError("Generator does greedy or sampled decoding; use beam_search() for num_beams > 1")
        if config.stop_strings and decode is None:
            raise UsageError("stop_strings need a tokenizer: pass decode= to the Generator")
        self.runner, self.config, self.decode = runner, config, decode
        self.rng = seeded(config.sampling_config.rng_seed)
        self.seqs = [SequenceState() for _ in range(batch_size)]
        self._logits: np.ndarray | None = None  # next-token logits, once inputs are fed
        self._unfed: list[list[int]] | None = None  # last generated tokens, fed lazily
        self._started = False

    def append_input_tokens(self, tokens: Sequence[Sequence[int]]) -> None:
        """``AppendInputTokens``: add tokens to every sequence (one list per sequence)."""
        if len(tokens) != len(self.seqs):
            raise UsageError(f"append_input_tokens got {len(tokens)} token lists for a batch of {len(self.seqs)}")
        bad = [t for seq in tokens for t in seq if not 0 <= int(t) < self.runner.vocab_size]
        if bad:
            raise UsageError(f"token ids {bad[:5]} are outside the vocabulary [0, {self.runner.vocab_size})")
        check_context(
            [len(s.history) + len(t) for s, t in zip(self.seqs, tokens, strict=True)], self.runner.max_positions
        )
        if not self._started:
            longest = max(len(t) for t in tokens)
            budget = self.config.new_token_budget(min(len(t) for t in tokens))
            capacity = longest + (budget if budget is not None else self.runner.max_positions)
            self.runner.start(len(self.seqs), capacity)
            self._started = True
        self._feed_pending()
        self._logits = self.runner.append(tokens)
        for seq, new in zip(self.seqs, tokens, strict=True):
            seq.history.extend(int(t) for t in new)
            seq.prompt_len = len(seq.history)
            seq.new_tokens, seq.finish_reason = [], None
            if self.config.new_token_budget(seq.prompt_len) == 0:  # max_length <= prompt
                seq.finish_reason = "length"

    def generate_next_token(self) -> list[int | None]:
        """``GenerateNextToken``: one new token per sequence (None for finished ones)."""
        if self._logits is None:
            raise UsageError("generate_next_token called before append_input_tokens")
        if self.is_done():
            raise UsageError("generate_next_token called after the generator is done")
        self._feed_pending()
        processed = reference.process(
            self._logits,
            [s.history for s in self.seqs],
            [len(s.new_tokens) for s in self.seqs],
            self.config,
        )
        chosen = reference.choose(processed, self.config.sampling_config, self.rng)
        out: list[int | None] = []
        # a sequence holds at most `capacity` tokens, this new one included (ORT GenAI's
        # max_length rule); every sequence is fed each step, so the longest bounds the batch
        full = max(self.runner.lengths) + 1 >= self.runner.capacity
        for seq, token in zip(self.seqs, chosen.tolist(), strict=True):
            if seq.finish_reason is not None:
                out.append(None)
                continue
            seq.history.append(token)
            seq.new_tokens.append(token)
            seq.finish_reason = self._finish_reason(seq, full)
            out.append(token)
        # finished sequences keep being fed their last token so the batch stays in step
        self._unfed = [[s.history[-1]] for s in self.seqs]
        return out

    def is_done(self) -> bool:
        """``IsDone``: every sequence hit EOS, a stop string or its length limit."""
        return self._started and all(s.finish_reason is not None for s in self.seqs)

    def _feed_pending(self) -> None:
        if self._unfed is not None:
            self._logits = self.runner.append(self._unfed)
            self._unfed = None

    def _finish_reason(self, seq: SequenceState, cache_full: bool) -> str | None:
        budget = self.config.new_token_budget(seq.prompt_len)
        return finish_reason(seq.new_tokens, self.config, self.decode, budget, cache_full=cache_full)


# --8<-- [end:generator]


@dataclass(frozen=True)
class Hypothesis:
    tokens: tuple[int, ...]  # generated tokens, ending with the EOS token when it finished
    score: float  # sum of log-probabilities divided by length ** length_penalty


def beam_search(runner: Runner, prompt: Sequence[int], config: GenerationConfig) -> list[Hypothesis]:
    """Beam search for one prompt, best hypotheses first (``num_return_sequences`` of them).

    Follows transformers' rules: each step ranks ``max(2, 1 + #eos) * num_beams`` candidates;
    those among the top ``num_beams`` that end (EOS, or the length limit) may enter a pool of
    ``num_beams`` finished hypotheses scored ``sum_logprob / new_len ** length_penalty``; the
    best non-ending candidates run on; ``stop_criteria`` decides when the pool is final.
    """
    beams = config.beam_search_config
    k = beams.num_beams
    check_context([len(prompt)], runner.max_positions)
    budget = config.new_token_budget(len(prompt))
    budget = runner.max_positions - len(prompt) if budget is None else budget
    runner.start(k, len(prompt) + budget)
    logits = runner.append([list(prompt)] * k)
    scores = np.full(k, -1e9)
    scores[0] = 0.0  # identical beams at the start: only the first one may expand
    running: list[list[int]] = [[] for _ in range(k)]
    pool: list[Hypothesis] = []
    keep = max(2, 1 + len(config.eos_token_ids)) * k
    for step in range(budget):
        last = step + 1 == budget
        history = [list(prompt) + r for r in running]
        processed = reference.process(logits, history, [step] * k, config)
        total = (reference.log_softmax(processed.astype(np.float64)) + scores[:, None]).ravel()
        top = np.argsort(-total, kind="stable")[:keep]
        cont_rows, cont_tokens, cont_scores = [], [], []
        for rank, index in enumerate(top):
            row, token = divmod(int(index), logits.shape[1])
            ends = last or token in config.eos_token_ids
            if ends and rank < k:
                tokens = (*running[row], token)  # EOS kept, as transformers does
                pool.append(Hypothesis(tokens, total[index] / _norm(len(tokens), beams)))
            elif not ends and len(cont_rows) < k:
                cont_rows.append(row)
                cont_tokens.append(token)
                cont_scores.append(total[index])
        pool = sorted(pool, key=lambda h: -h.score)[:k]
        # no continuation left (every candidate ended: e.g. every token is an EOS) is final too
        if last or not cont_scores or _pool_is_final(pool, max(cont_scores), step + 1, budget, beams):
            break
        running = [running[r] + [t] for r, t in zip(cont_rows, cont_tokens, strict=True)]
        scores = np.asarray(cont_scores)
        runner.reorder(cont_rows)
        logits = runner.append([[t] for t in cont_tokens])
    return pool[: beams.num_return_sequences]


def _norm(length: int, beams) -> float:
    return float(length) ** beams.length_penalty


def _pool_is_final(pool: list[Hypothesis], best_running: float, length: int, budget: int, beams) -> bool:
    """No running beam can still enter the pool (transformers' early-stop heuristic)."""
    if len(pool) < beams.num_beams:
        return False
    if beams.stop_criteria is StopCriteria.EARLY:
        return True
    never = beams.stop_criteria is StopCriteria.NEVER and beams.length_penalty > 0
    best_length = budget if never else length
    return best_running / _norm(best_length, beams) <= pool[-1].score


class RunnerEngine:
    """The engine of every runner-based backend: ``Generator`` and ``beam_search`` over one
    runner (one session, reused by every call)."""

    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def generator(self, config: GenerationConfig, decode: Decode, batch_size: int) -> Generator:
        return Generator(self.runner, config, decode=decode, batch_size=batch_size)

    def beam_search(self, prompt: Sequence[int], config: GenerationConfig) -> list[Hypothesis]:
        return beam_search(self.runner, prompt, config)
