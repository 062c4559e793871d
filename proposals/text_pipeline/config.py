"""The WG Text2Text interface's value types, in idiomatic Python.

Mirrors ``onnx::genai::Text2Text`` in ``generative-ai/genai-interfaces/include/pipelines/
text2text_pipeline.hpp`` (onnx/working-groups): same names in snake_case, same defaults,
``SIZE_MAX`` / ``numeric_limits::max()`` sentinels become ``None``. Every config is a
frozen dataclass checked on construction: a bad value raises ``UsageError`` with one line
saying what is wrong and what is valid.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from generator.errors import UsageError


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _optional_positive(name: str, value: int | None) -> None:
    _require(
        value is None or (_is_int(value) and value >= 1),
        f"{name} must be a positive integer or None (unbounded), got {value!r}",
    )


# --8<-- [start:types]
@dataclass(frozen=True)
class GenerationInput:
    """``Text2Text::GenerationInput``: the prompt."""

    text: str

    def __post_init__(self) -> None:
        _require(isinstance(self.text, str), f"GenerationInput.text must be a str, got {self.text!r}")
        try:
            self.text.encode("utf-8")
        except UnicodeEncodeError as err:  # lone surrogates: bytes that were not UTF-8
            bad = self.text[err.start : err.end].encode("utf-8", "surrogateescape")
            raise UsageError(
                f"the prompt is not valid UTF-8 text (bytes {bad!r} at {err.start}); give UTF-8 text"
            ) from None


@dataclass(frozen=True)
class GenerationResult:
    """``Text2Text::GenerationResult``: the generated text (prompt excluded).

    Python extras: the generated ``token_ids``, why it stopped (``finish_reason``: ``"eos"``,
    ``"stop_string"``, ``"length"``), and for beam search every returned sequence
    (``candidates``, best first; ``text`` is ``candidates[0]``).
    """

    text: str
    token_ids: tuple[int, ...] = ()
    finish_reason: str = "length"
    candidates: tuple[str, ...] = ()


@dataclass(frozen=True)
class SamplingConfig:
    """``GenerationConfig::SamplingConfig``. ``top_k=None`` keeps every token."""

    do_sample: bool = False
    rng_seed: int = 0
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float = 1.0
    repetition_penalty: float = 1.0

    def __post_init__(self) -> None:
        _require(isinstance(self.do_sample, bool), f"do_sample must be a bool, got {self.do_sample!r}")
        _require(
            _is_int(self.rng_seed) and 0 <= self.rng_seed < 2**32,
            f"rng_seed must be an integer in [0, 2**32), got {self.rng_seed!r}",
        )
        _require(
            _finite(self.temperature) and self.temperature >= _FLOAT32_TINY,
            f"temperature must be a finite float > 0, at least {_FLOAT32_TINY:.3g} (logits are divided by it "
            "in float32, where a smaller one is 0 or subnormal; use greedy decoding for the argmax), "
            f"got {self.temperature!r}",
        )
        _optional_positive("top_k", self.top_k)
        _require(
            _finite(self.top_p) and 0 < self.top_p <= 1,
            f"top_p must be in (0, 1], got {self.top_p!r}",
        )
        _require(
            _finite(self.repetition_penalty) and self.repetition_penalty > 0,
            f"repetition_penalty must be a finite float > 0 (1.0 = off), got {self.repetition_penalty!r}",
        )


class StopCriteria(enum.Enum):
    """``BeamSearchConfig::StopCriteria``; values are transformers' ``early_stopping``."""

    EARLY = True
    HEURISTIC = False
    NEVER = "never"


@dataclass(frozen=True)
class BeamSearchConfig:
    """``GenerationConfig::BeamSearchConfig``. Implemented: ``num_beams``,
    ``num_return_sequences``, ``length_penalty``, ``stop_criteria``; the group/diversity and
    n-gram fields are accepted only at their neutral values."""

    num_beams: int = 1
    num_beam_groups: int = 1
    diversity_penalty: float = 0.0
    length_penalty: float = 1.0
    num_return_sequences: int = 1
    no_repeat_ngram_size: int | None = None
    stop_criteria: StopCriteria = StopCriteria.HEURISTIC

    def __post_init__(self) -> None:
        _require(
            _is_int(self.num_beams) and self.num_beams >= 1,
            f"num_beams must be an integer >= 1, got {self.num_beams!r}",
        )
        _require(
            _is_int(self.num_return_sequences) and 1 <= self.num_return_sequences <= self.num_beams,
            f"num_return_sequences must be in [1, num_beams={self.num_beams}], got {self.num_return_sequences!r}",
        )
        _require(
            self.num_beam_groups == 1,
            f"num_beam_groups={self.num_beam_groups!r} (group beam search) is not implemented; valid: 1",
        )
        _require(
            self.diversity_penalty == 0.0,
            f"diversity_penalty={self.diversity_penalty!r} needs group beam search, "
            "which is not implemented; valid: 0.0",
        )
        _require(
            self.no_repeat_ngram_size in (None, 0),
            f"no_repeat_ngram_size={self.no_repeat_ngram_size!r} is not implemented; valid: None",
        )
        _require(
            _finite(self.length_penalty),
            f"length_penalty must be a finite float, got {self.length_penalty!r}",
        )
        _require(
            isinstance(self.stop_criteria, StopCriteria),
            f"stop_criteria must be a StopCriteria ({', '.join(StopCriteria.__members__)}), got {self.stop_criteria!r}",
        )


@dataclass(frozen=True)
class GenerationConfig:
    """``Text2Text::GenerationConfig``. ``max_length`` counts prompt + new tokens; when both
    limits are set the tighter one applies. ``None`` means unbounded (``SIZE_MAX``); the
    decoder's cache length still bounds a run."""

    max_length: int | None = None
    max_new_tokens: int | None = None
    min_new_tokens: int = 0
    eos_token_ids: frozenset[int] = frozenset()
    stop_strings: frozenset[str] = frozenset()
    sampling_config: SamplingConfig = field(default_factory=SamplingConfig)
    beam_search_config: BeamSearchConfig = field(default_factory=BeamSearchConfig)

    def __post_init__(self) -> None:
        _optional_positive("max_length", self.max_length)
        _optional_positive("max_new_tokens", self.max_new_tokens)
        _require(
            _is_int(self.min_new_tokens) and self.min_new_tokens >= 0,
            f"min_new_tokens must be an integer >= 0, got {self.min_new_tokens!r}",
        )
        if self.max_new_tokens is not None:
            _require(
                self.min_new_tokens <= self.max_new_tokens,
                f"min_new_tokens={self.min_new_tokens} exceeds max_new_tokens={self.max_new_tokens}",
            )
        object.__setattr__(self, "eos_token_ids", _id_set(self.eos_token_ids))
        object.__setattr__(self, "stop_strings", _string_set(self.stop_strings))
        _require(
            isinstance(self.sampling_config, SamplingConfig),
            "sampling_config must be a SamplingConfig",
        )
        _require(
            isinstance(self.beam_search_config, BeamSearchConfig),
            "beam_search_config must be a BeamSearchConfig",
        )
        _require(
            not (self.sampling_config.do_sample and self.beam_search_config.num_beams > 1),
            "do_sample=True with num_beams > 1 (beam sampling) is not implemented; use one or the other",
        )

    def with_(self, **changes) -> GenerationConfig:
        """A copy with some fields replaced (validated again)."""
        return replace(self, **changes)

    def new_token_budget(self, prompt_len: int) -> int | None:
        """How many tokens may be generated after a prompt of ``prompt_len`` tokens."""
        limits = [self.max_new_tokens] if self.max_new_tokens is not None else []
        if self.max_length is not None:
            limits.append(max(self.max_length - prompt_len, 0))
        return min(limits) if limits else None


# --8<-- [end:types]


_FLOAT32_TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _id_set(values: Iterable[int]) -> frozenset[int]:
    values = frozenset(values)
    bad = [v for v in values if not _is_int(v) or v < 0]
    _require(not bad, f"eos_token_ids must be non-negative integers, got {sorted(map(repr, bad))}")
    return values


def _string_set(values: Iterable[str]) -> frozenset[str]:
    _require(
        not isinstance(values, str),
        f"stop_strings must be a collection of strings, not the string {values!r}",
    )
    values = frozenset(values)
    _require(
        all(isinstance(v, str) and v for v in values),
        f"stop_strings must be non-empty strings, got {sorted(map(repr, values))}",
    )
    return values
