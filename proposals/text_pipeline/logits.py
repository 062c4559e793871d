"""Next-token selection in numpy: the logits processors a backend applies to one step.

The order and the arithmetic follow transformers' ``generate`` (repetition penalty,
min-new-tokens EOS ban, then for sampling temperature, top-k, top-p), so the tests can
check each step against transformers' own processors on the same logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from proposals.text_pipeline.config import GenerationConfig, SamplingConfig

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
    for row, u in zip(probs, draws, strict=True):
        cdf = np.cumsum(row)
        # inverse CDF; scaling by the total keeps rounding from picking a filtered last token
        picks.append(np.searchsorted(cdf, u * cdf[-1], side="right"))
    return np.asarray(picks)
