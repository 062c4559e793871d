"""The pipeline's semantics in numpy: how a next token is chosen and when generation stops.

This is the normative reference every backend uses and the tests check against
transformers:

- **logits processing**: the order and the arithmetic follow transformers' ``generate``
  (repetition penalty, min-new-tokens EOS ban, then for sampling temperature, top-k,
  top-p), checked step by step against transformers' own processors on the same logits;
- **choosing**: greedy argmax, or one seeded inverse-CDF draw per row;
- **stopping**: why a sequence finished (``"eos"``, ``"stop_string"``, ``"length"``), what
  a stop string leaves in the text, and how much context a prompt must leave free;
- **streaming**: which part of the decoded text may be shown yet (whole characters only).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from generator.errors import UsageError
from proposals.text_pipeline.config import GenerationConfig, SamplingConfig

Decode = Callable[[Sequence[int]], str]

FILTERED = -np.inf  # transformers' filter_value


# --8<-- [start:processors]
def repetition_penalty(logits: np.ndarray, history: Sequence[Sequence[int]], penalty: float) -> np.ndarray:
    """CTRL-style penalty on every token already in a row's history (prompt + generated):
    positive logits are divided by ``penalty``, negative ones multiplied."""
    out = logits.copy()
    for row, tokens in enumerate(history):
        seen = np.unique(np.asarray(tokens, np.int64))
        score = out[row, seen]
        out[row, seen] = np.where(score < 0, score * penalty, score / penalty)
    return out


def ban_tokens(logits: np.ndarray, rows: Sequence[int], tokens: Sequence[int]) -> np.ndarray:
    """Set ``tokens`` to -inf in ``rows`` (EOS before ``min_new_tokens`` is reached)."""
    out = logits.copy()
    if len(rows) and len(tokens):
        out[np.ix_(np.asarray(rows), np.asarray(sorted(tokens)))] = FILTERED
    return out


def temperature(logits: np.ndarray, value: float) -> np.ndarray:
    return logits / np.float32(value)


def top_k(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the ``k`` largest logits per row (ties with the k-th are kept too)."""
    k = min(k, logits.shape[-1])
    kth = -np.partition(-logits, k - 1, axis=-1)[:, k - 1 : k]
    return np.where(logits < kth, FILTERED, logits)


def top_p(logits: np.ndarray, p: float) -> np.ndarray:
    """Nucleus filtering: drop the least likely tokens whose total probability is <= 1 - p,
    always keeping the most likely one."""
    order = np.argsort(logits, axis=-1, kind="stable")  # ascending
    ranked = np.take_along_axis(logits, order, axis=-1)
    cumulative = np.cumsum(softmax(ranked), axis=-1)
    drop_ranked = cumulative <= (1 - p)
    drop_ranked[:, -1] = False
    drop = np.zeros_like(drop_ranked)
    np.put_along_axis(drop, order, drop_ranked, axis=-1)
    return np.where(drop, FILTERED, logits)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=-1, keepdims=True)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


# --8<-- [end:processors]


def process(
    logits: np.ndarray,
    history: Sequence[Sequence[int]],
    new_counts: Sequence[int],
    config: GenerationConfig,
) -> np.ndarray:
    """All processors of one step, in transformers' order, for a ``[rows, vocab]`` block."""
    sampling = config.sampling_config
    logits = logits.astype(np.float32, copy=False)
    if sampling.repetition_penalty != 1.0:
        logits = repetition_penalty(logits, history, sampling.repetition_penalty)
    early = [row for row, n in enumerate(new_counts) if n < config.min_new_tokens]
    logits = ban_tokens(logits, early, config.eos_token_ids)
    if sampling.do_sample:
        logits = warp(logits, sampling)
    return logits


def warp(logits: np.ndarray, sampling: SamplingConfig) -> np.ndarray:
    """The sampling-only warpers: temperature, top-k, top-p."""
    if sampling.temperature != 1.0:
        logits = temperature(logits, sampling.temperature)
    if sampling.top_k is not None:
        logits = top_k(logits, sampling.top_k)
    if sampling.top_p < 1.0:
        logits = top_p(logits, sampling.top_p)
    return logits


def choose(logits: np.ndarray, sampling: SamplingConfig, rng: np.random.RandomState) -> np.ndarray:
    """Greedy argmax, or one draw per row from the processed distribution."""
    if not sampling.do_sample:
        return logits.argmax(axis=-1)
    probs = softmax(logits.astype(np.float64))
    draws = rng.random_sample(len(probs))
    picks = []
    for index, (row, u) in enumerate(zip(probs, draws, strict=True)):
        cdf = np.cumsum(row)
        if not (np.isfinite(cdf[-1]) and cdf[-1] > 0):
            # torch.multinomial, which transformers samples with, refuses such a row too
            raise UsageError(
                f"cannot sample row {index}: its processed logits hold NaN or +inf (the model's "
                "logits, or a temperature so small that they overflow float32); use greedy decoding "
                "or a larger temperature"
            )
        # inverse CDF; scaling by the total keeps rounding from picking a filtered last token
        pick = int(np.searchsorted(cdf, u * cdf[-1], side="right"))
        # u * total can round up to the total: then the last token that has any probability
        picks.append(min(pick, int(np.flatnonzero(row)[-1])))
    return np.asarray(picks)


# --8<-- [start:stopping]
def finish_reason(
    new_tokens: Sequence[int],
    config: GenerationConfig,
    decode: Decode | None,
    budget: int | None,
    *,
    cache_full: bool = False,
) -> str | None:
    """Why a sequence stops after its latest token, or None while it runs on.

    EOS first (it is banned before ``min_new_tokens``, see ``process``), then a stop string
    in the decoded new text (checked only from ``min_new_tokens`` on), then the length:
    ``budget`` new tokens (``GenerationConfig.new_token_budget``) or a full cache.
    """
    n = len(new_tokens)
    if new_tokens[-1] in config.eos_token_ids:
        return "eos"
    if config.stop_strings and n >= config.min_new_tokens:
        if decode is None:
            raise UsageError("stop_strings need a tokenizer to decode the new tokens")
        text = decode(new_tokens)
        if any(s in text for s in config.stop_strings):
            return "stop_string"
    if (budget is not None and n >= budget) or cache_full:
        return "length"
    return None


def cut_after_stop(text: str, stops: frozenset[str]) -> str:
    """The text up to and including the earliest stop string (all of it when none occurs)."""
    ends = [text.find(s) + len(s) for s in stops if s in text]
    return text[: min(ends)] if ends else text


def check_context(lengths: Sequence[int], max_positions: int) -> None:
    """Each sequence must leave room for at least one new token in the model's context."""
    longest = max(lengths)
    if longest >= max_positions:
        raise UsageError(
            f"the prompt has {longest} tokens; the model's context is {max_positions} tokens, "
            f"so a prompt may have at most {max_positions - 1} (one new token must fit)"
        )


def stream_piece(shown: str, text: str, done: bool) -> str | None:
    """The new text to show after a step, or None to wait: a decoded text that ends in
    U+FFFD holds a partial UTF-8 character, held back until more tokens (or the end) come."""
    if text == shown or (not done and text.endswith("\ufffd")):
        return None
    return text[len(shown) :]


# --8<-- [end:stopping]
