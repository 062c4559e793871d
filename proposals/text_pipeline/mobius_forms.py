"""mobius-onnx 0.1.0, the GenAI WG's model builder, as a client of the KV-cache proposal.

``build_from_gguf(path, static_cache=True, max_seq_len=N)`` emits this project's pattern
(TensorScatter + Attention-24 over a static cache) from the packaged GGUF files. This module
builds that form, runs it with the cache copied by ``session.run`` and bound in place through
IOBinding, checks it against the KV-cache proposal's in-place rule
(:func:`proposals.kv_cache.inplace.in_place_hazards`), and records how its inputs differ from
this project's decoder. ``python -m proposals.text_pipeline.mobius_forms`` writes
``bench/mobius_inplace.json`` (part of ``make bench``).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from generator.bench import write_json
from generator.errors import UsageError
from generator.ort import ERROR, session
from proposals.kv_cache.inplace import in_place_hazards, scatter_pairs

TOPIC = "text_pipeline"
# The three forms of mobius-onnx 0.1.0's GGUF builder (build_from_gguf keyword arguments).
FORMS = {
    "gqa": {"execution_provider": "cpu"},  # com.microsoft.GroupQueryAttention, growing cache
    "static": {"static_cache": True},  # TensorScatter + Attention-24 over a static cache
    "4-bit": {"keep_quantized": True, "execution_provider": "cpu"},  # MatMulNBits + GQA
}


def build_mobius(gguf: Path, form: str, max_seq_len: int | None = None) -> ir.Model:
    """mobius-onnx's model of a GGUF file in one of :data:`FORMS` (its progress bars muted)."""
    from mobius.integrations.gguf._builder import build_from_gguf

    if form not in FORMS:
        raise UsageError(f"unknown mobius form {form!r}; valid: {', '.join(FORMS)}")
    extra = {"max_seq_len": max_seq_len} if form == "static" else {}
    with contextlib.redirect_stderr(io.StringIO()):
        return build_from_gguf(gguf, **FORMS[form], **extra)["model"]


def ort_session(model: ir.Model, threads: int = 2) -> ort.InferenceSession:
    proto = ir.serde.serialize_model(model)
    return session(proto, threads=threads, log_severity=ERROR)


# --8<-- [start:static_runner]
class MobiusStaticRunner:
    """Runs mobius's static-cache graph: caches ``key_cache.{i}`` / ``value_cache.{i}`` of
    shape (B, max_seq_len, kv_heads * head_dim), written by TensorScatter at
    ``write_indices`` and read by Attention-24 with ``nonpad_kv_seqlen``. ``inplace`` binds
    each cache as its own ``updated_*`` output through IOBinding; otherwise ``session.run``
    copies them."""

    def __init__(self, sess: ort.InferenceSession, *, inplace: bool) -> None:
        self.session, self.inplace = sess, inplace
        self.cache_names = [i.name for i in sess.get_inputs() if "_cache." in i.name]
        first = next(i for i in sess.get_inputs() if i.name == self.cache_names[0])
        self.max_positions, self.width = first.shape[1], first.shape[2]
        self.vocab_size = sess.get_outputs()[0].shape[-1]
        self.lengths: list[int] = []

    def start(self, batch: int, capacity: int, fill: float = 0.0) -> None:
        if capacity > self.max_positions:
            raise UsageError(f"{capacity} tokens exceed the static cache of {self.max_positions}")
        self.capacity = capacity
        self.caches = {n: np.full((batch, self.max_positions, self.width), fill, np.float32) for n in self.cache_names}
        self.values = {n: ort.OrtValue.ortvalue_from_numpy(c) for n, c in self.caches.items()}
        self.lengths = [0] * batch

    def append(self, tokens: Sequence[Sequence[int]]) -> np.ndarray:
        ids = np.asarray(tokens, np.int64)
        batch, seq = ids.shape
        start = self.lengths[0]  # sequences advance together
        feeds = {
            "input_ids": ids,
            "position_ids": np.tile(np.arange(start, start + seq, dtype=np.int64), (batch, 1)),
            "write_indices": np.full(batch, start, np.int64),
            "nonpad_kv_seqlen": np.full(batch, start + seq, np.int64),
        }
        if self.inplace:
            binding = self.session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            for name in self.cache_names:  # one OrtValue as past and present
                binding.bind_ortvalue_input(name, self.values[name])
                binding.bind_ortvalue_output(f"updated_{name}", self.values[name])
            binding.bind_output("logits")
            self.session.run_with_iobinding(binding)
            logits = binding.get_outputs()[-1].numpy()
        else:
            names = [o.name for o in self.session.get_outputs()]
            out = dict(zip(names, self.session.run(None, {**feeds, **self.caches}), strict=True))
            self.caches = {n: out[f"updated_{n}"] for n in self.cache_names}
            logits = out["logits"]
        self.lengths = [n + seq for n in self.lengths]
        return logits[:, -1, :]


# --8<-- [end:static_runner]


class MobiusGqaRunner:
    """Runs mobius's GroupQueryAttention form: a growing cache ``past_key_values.{i}.key`` of
    shape (B, kv_heads, past, head_dim), an all-ones ``attention_mask`` over past + new
    tokens; ``session.run`` returns the longer ``present.{i}.key``, fed back next step."""

    def __init__(self, sess: ort.InferenceSession) -> None:
        self.session = sess
        self.cache_inputs = [i for i in sess.get_inputs() if i.name.startswith("past_key_values.")]
        self.output_names = [o.name for o in sess.get_outputs()]
        self.vocab_size = sess.get_outputs()[0].shape[-1]
        self.lengths: list[int] = []

    def start(self, batch: int, capacity: int) -> None:
        self.capacity = capacity
        self.caches = {i.name: np.zeros((batch, i.shape[1], 0, i.shape[3]), np.float32) for i in self.cache_inputs}
        self.lengths = [0] * batch

    def append(self, tokens: Sequence[Sequence[int]]) -> np.ndarray:
        ids = np.asarray(tokens, np.int64)
        mask = np.ones((ids.shape[0], self.lengths[0] + ids.shape[1]), np.int64)
        out = dict(
            zip(
                self.output_names,
                self.session.run(None, {"input_ids": ids, "attention_mask": mask, **self.caches}),
                strict=True,
            )
        )
        self.caches = {name: out[name.replace("past_key_values.", "present.")] for name in self.caches}
        self.lengths = [n + ids.shape[1] for n in self.lengths]
        return out["logits"][:, -1, :]


def greedy(runner, prompt: Sequence[int], new_tokens: int, **start) -> list[int]:
    """Greedy tokens after ``prompt`` from any runner with ``start``/``append``."""
    runner.start(1, len(prompt) + new_tokens, **start)
    logits, out = runner.append([list(prompt)]), []
    for _ in range(new_tokens):
        out.append(int(logits[0].argmax()))
        logits = runner.append([[out[-1]]])
    return out


def same_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens two generations share."""
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


def cache_pairs(model: ir.Model | onnx.ModelProto) -> int:
    return len(scatter_pairs(model))


PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three uses of a paperclip.",
    "Explain what a KV cache is in one sentence.",
)


def inplace_evidence(model: str = "smollm2-135m-instruct", new_tokens: int = 16) -> list[dict]:
    """Greedy tokens of mobius's static-cache graph, copied and bound in place, beside this
    pipeline's decoder on the same checkpoint, per prompt; plus the in-place rule's verdict."""
    from proposals.text_pipeline.checkpoints import checkpoint_file
    from proposals.text_pipeline.export import exported_folder
    from proposals.text_pipeline.folder import ModelFolder
    from proposals.text_pipeline.runners import OrtRunner
    from proposals.text_pipeline.tokenizer import load_tokenizer

    folder = ModelFolder.read(exported_folder(model))
    tokenizer = load_tokenizer(folder.tokenizer_json)
    static = build_mobius(checkpoint_file(model), "static", max_seq_len=128)
    sess = ort_session(static)
    ours = OrtRunner(folder.decoder, external_data=folder.external_data)
    runners = {
        "mobius static, session.run (copies)": (MobiusStaticRunner(sess, inplace=False), {}),
        "mobius static, IOBinding in place": (MobiusStaticRunner(sess, inplace=True), {}),
        "mobius static, in place, NaN in unwritten slots": (MobiusStaticRunner(sess, inplace=True), {"fill": np.nan}),
        "this pipeline, IOBinding in place": (ours, {}),
    }
    rows = []
    for text in PROMPTS:
        prompt = tokenizer.encode(text).ids
        tokens = {name: greedy(r, prompt, new_tokens, **kw) for name, (r, kw) in runners.items()}
        reference = tokens["mobius static, session.run (copies)"]
        rows.append(
            {
                "prompt": text,
                "prompt_tokens": len(prompt),
                "tokens": tokens,
                "equal_to_copying": {
                    n: sum(a == b for a, b in zip(t, reference, strict=True)) for n, t in tokens.items()
                },
            }
        )
    verdict = {
        "mobius static": {"pairs": cache_pairs(static), "hazards": in_place_hazards(static)},
        "this pipeline": {"pairs": cache_pairs(folder.decoder), "hazards": in_place_hazards(folder.decoder)},
    }
    return rows, verdict


def main(quick: bool = False) -> None:
    rows, verdict = inplace_evidence(new_tokens=4 if quick else 16)
    for row in rows:
        print(row["prompt"], row["equal_to_copying"])
    print(verdict)
    if not quick:
        setup = {
            "model": "smollm2-135m-instruct",
            "max_seq_len": 128,
            "new_tokens": 16,
            "threads": 2,
            "in_place_rule": verdict,
            "mobius": _version("mobius-onnx"),
        }
        write_json(TOPIC, "mobius_inplace", rows, setup)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":  # pragma: no cover
    import sys

    main(quick="--quick" in sys.argv)
