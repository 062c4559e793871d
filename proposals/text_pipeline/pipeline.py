"""``Text2Text::Pipeline`` in Python: a tokenizer and a generation config over an engine.

A backend is an *engine* (``Engine``): something that makes a ``Text2Text::Generator`` for
a batch of token ids, and runs beam search. ``Pipeline`` composes one with a tokenizer and
does everything that is about text, once for every backend: encoding prompts, decoding new
tokens, cutting after a stop string and holding back partial characters while streaming
(the rules are in ``reference``). Backends register in ``factory``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from generator.errors import UsageError
from proposals.text_pipeline.config import GenerationConfig, GenerationInput, GenerationResult
from proposals.text_pipeline.reference import Decode, cut_after_stop, stream_piece


class TokenGenerator(Protocol):
    """``Text2Text::Generator``: what ``Pipeline`` drives (``generation.Generator`` is one)."""

    seqs: Sequence  # per sequence: ``new_tokens`` and ``finish_reason`` (None while running)

    def append_input_tokens(self, tokens: Sequence[Sequence[int]]) -> None: ...

    def generate_next_token(self) -> list[int | None]: ...

    def is_done(self) -> bool: ...


class Engine(Protocol):
    """What a backend provides to ``Pipeline``."""

    def generator(self, config: GenerationConfig, decode: Decode, batch_size: int) -> TokenGenerator:
        """A fresh generator for ``batch_size`` sequences (greedy or sampled decoding)."""

    def beam_search(self, prompt: Sequence[int], config: GenerationConfig) -> list:
        """Hypotheses (``tokens``, best first) for one prompt; UsageError where unsupported."""


# --8<-- [start:pipeline]
class Pipeline:
    """``Text2Text::Pipeline`` over an engine and a tokenizer.

    ``pipeline(GenerationInput)`` is ``operator()``; ``generate`` takes a batch;
    ``stream`` yields text pieces as tokens are generated.
    """

    def __init__(self, engine: Engine, tokenizer, config: GenerationConfig) -> None:
        self.engine, self.tokenizer = engine, tokenizer
        self.set_generation_config(config)

    def get_generation_config(self) -> GenerationConfig:
        return self.config

    def set_generation_config(self, config: GenerationConfig) -> None:
        if not isinstance(config, GenerationConfig):
            raise UsageError(f"expected a GenerationConfig, got {type(config).__name__}")
        self.config = config

    def __call__(self, prompt: GenerationInput) -> GenerationResult:
        return self.generate([prompt])[0]

    def generate(self, prompts: Sequence[GenerationInput]) -> list[GenerationResult]:
        """Generate for a batch of prompts (beam search runs prompt by prompt)."""
        if not prompts:
            raise UsageError("generate needs at least one GenerationInput")
        ids = [self.encode(p) for p in prompts]
        if self.config.beam_search_config.num_beams > 1:
            return [self._beam(prompt) for prompt in ids]
        gen = self.generator(ids)
        while not gen.is_done():
            gen.generate_next_token()
        return [self._result(s.new_tokens, s.finish_reason) for s in gen.seqs]

    def stream(self, prompt: GenerationInput) -> Iterator[str]:
        """Yield the new text as each token is generated (whole characters only)."""
        gen = self.generator([self.encode(prompt)])
        shown = ""
        while not gen.is_done():
            gen.generate_next_token()
            text = self._result(gen.seqs[0].new_tokens, gen.seqs[0].finish_reason).text
            piece = stream_piece(shown, text, gen.is_done())
            if piece is not None:
                yield piece
                shown = text

    def generator(self, prompts: Sequence[Sequence[int]]) -> TokenGenerator:
        """A fresh ``Text2Text::Generator`` from the engine, with the prompts appended."""
        gen = self.engine.generator(self.config, self.decode, len(prompts))
        gen.append_input_tokens(prompts)
        return gen

    # --8<-- [end:pipeline]

    def encode(self, prompt: GenerationInput) -> list[int]:
        if not isinstance(prompt, GenerationInput):
            raise UsageError(f"expected a GenerationInput, got {type(prompt).__name__}")
        ids = self.tokenizer.encode(prompt.text).ids
        if not ids:
            raise UsageError("the prompt is empty; give at least one character")
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _result(self, tokens: Sequence[int], reason: str | None) -> GenerationResult:
        text = self.decode(tokens)
        if reason == "stop_string":
            text = cut_after_stop(text, self.config.stop_strings)
        return GenerationResult(text, tuple(tokens), reason or "length", (text,))

    def _beam(self, prompt: list[int]) -> GenerationResult:
        hyps = self.engine.beam_search(prompt, self.config)
        texts = tuple(self.decode(h.tokens) for h in hyps)
        best = hyps[0].tokens
        reason = "eos" if len(best) and best[-1] in self.config.eos_token_ids else "length"
        return GenerationResult(texts[0], best, reason, texts)
