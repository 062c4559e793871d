"""The onnxruntime-genai backend: the same decoder run by ORT GenAI's own generator.

ORT GenAI 0.18 knows nothing of ``write_indices``: it feeds ``input_ids``,
``position_ids`` and the ``past_*`` buffers named in ``genai_config.json``, and with
``past_present_share_buffer`` it binds one ``[batch, kv_heads, max_length, head_dim]``
buffer as both past and present, which is exactly the TensorScatter in-place pattern.
So the adapter below replaces the ``write_indices`` input with ``position_ids`` and
reads the write index as ``position_ids[:, 0]``. Checked with 0.18.0: batch 1 is
token-identical to transformers, for the linear and the circular (sliding-window) cache
(the buffer takes the decoder's fixed window length). A batch of prompts of different
lengths is not: ORT GenAI left-pads, so the padded row's tokens sit at shifted cache slots
and its positions restart after the padding; that row's output diverges. This pipeline
therefore runs ORT GenAI one prompt at a time.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from generator.errors import UsageError
from generator.onnx_build import initializer
from proposals.text_pipeline.config import GenerationInput, GenerationResult, StopCriteria
from proposals.text_pipeline.decoder import spec_from_model
from proposals.text_pipeline.pipeline import ModelFolder, Pipeline, _cut_after_stop
from proposals.text_pipeline.tokenizer import EOS_TOKEN, PAD_TOKEN, load_tokenizer


# --8<-- [start:adapter]
def position_ids_decoder(model: onnx.ModelProto) -> onnx.ModelProto:
    """The decoder with ``write_indices`` computed as ``position_ids[:, 0]`` from a new
    ``position_ids [batch, seq]`` input (what ORT GenAI feeds)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    kept = [i for i in graph.input if i.name != "write_indices"]
    del graph.input[:]
    positions = helper.make_tensor_value_info("position_ids", TensorProto.INT64, ["batch", "seq"])
    graph.input.extend([kept[0], positions, *kept[1:]])
    graph.initializer.append(initializer("first_position", np.array(0, np.int64)))
    graph.node.insert(
        0,
        helper.make_node(
            "Gather",
            ["position_ids", "first_position"],
            ["write_indices"],
            axis=1,
            name="write_indices_node",
        ),
    )
    return out


def genai_config(model: onnx.ModelProto, eos_token_ids: Sequence[int]) -> dict:
    """``genai_config.json`` for the adapted decoder (shared past/present buffers)."""
    spec = spec_from_model(model)
    return {
        "model": {
            "type": spec.model_type,
            "context_length": spec.max_positions,
            "vocab_size": spec.vocab_size,
            "bos_token_id": sorted(eos_token_ids)[0],
            "eos_token_id": sorted(eos_token_ids),
            "pad_token_id": 1,
            "decoder": {
                "filename": "model.onnx",
                "head_size": spec.head_dim,
                "hidden_size": spec.hidden_size,
                "num_attention_heads": spec.num_heads,
                "num_key_value_heads": spec.num_kv_heads,
                "num_hidden_layers": spec.num_layers,
                "session_options": {"provider_options": [], "intra_op_num_threads": 2},
                "inputs": {
                    "input_ids": "input_ids",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_%d",
                    "past_value_names": "past_value_%d",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present_key_%d",
                    "present_value_names": "present_value_%d",
                },
            },
        },
        "search": {"max_length": spec.max_positions, "past_present_share_buffer": True},
    }


# --8<-- [end:adapter]


def write_genai_folder(folder: ModelFolder, target: Path) -> None:
    """model.onnx (adapted), tokenizer files and genai_config.json in ``target``."""
    eos = sorted(folder.config.eos_token_ids) or [0]
    onnx.save(position_ids_decoder(folder.decoder), target / "model.onnx")
    (target / "tokenizer.json").write_bytes(folder.tokenizer_json)
    (target / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "eos_token": EOS_TOKEN,
                "pad_token": PAD_TOKEN,
            }
        )
    )
    (target / "genai_config.json").write_text(json.dumps(genai_config(folder.decoder, eos), indent=2))


class OrtGenaiPipeline(Pipeline):
    """``Text2Text::Pipeline`` run by onnxruntime-genai, one prompt at a time."""

    def __init__(self, folder: ModelFolder) -> None:
        import onnxruntime_genai as og

        spec = spec_from_model(folder.decoder)
        self._dir = tempfile.TemporaryDirectory(prefix="ortgenai-")
        write_genai_folder(folder, Path(self._dir.name))
        self.og = og
        self.model = og.Model(self._dir.name)
        self.spec = spec
        super().__init__(None, load_tokenizer(folder.tokenizer_json), folder.config)

    def generate(self, prompts: Sequence[GenerationInput]) -> list[GenerationResult]:
        return [self._one(p) for p in prompts]

    def stream(self, prompt: GenerationInput) -> Iterator[str]:
        shown = ""
        for tokens, reason in self._run(prompt):
            text = self._text(tokens, reason)
            if text != shown and (reason or not text.endswith("\ufffd")):
                yield text[len(shown) :]
                shown = text

    def generator(self, prompts):
        raise UsageError("the onnxruntime-genai backend exposes its own og.Generator; use __call__, generate or stream")

    def _one(self, prompt: GenerationInput) -> GenerationResult:
        runs = list(self._run(prompt))
        tokens, reason = runs[-1] if runs else ([], "length")
        text = self._text(tokens, reason)
        return GenerationResult(text, tuple(tokens), reason, (text,))

    def _text(self, tokens, reason) -> str:
        text = self.decode(tokens)
        return _cut_after_stop(text, self.config.stop_strings) if reason == "stop_string" else text

    def _run(self, prompt: GenerationInput):
        """Yield (new tokens so far, finish reason or None) after every step."""
        og, c = self.og, self.config
        if c.beam_search_config.num_beams > 1:
            raise UsageError(
                "beam search on the onnxruntime-genai backend is not wired here; use the onnxruntime backend"
            )
        ids = self.encode(prompt)
        budget = c.new_token_budget(len(ids))
        total = self.spec.max_positions if budget is None else min(len(ids) + budget, self.spec.max_positions)
        params = og.GeneratorParams(self.model)
        s = c.sampling_config
        options = {
            "max_length": total,
            "min_length": len(ids) + c.min_new_tokens,
            "do_sample": s.do_sample,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "repetition_penalty": s.repetition_penalty,
            "random_seed": s.rng_seed,
            "top_k": s.top_k or self.spec.vocab_size,
            "early_stopping": c.beam_search_config.stop_criteria is StopCriteria.EARLY,
        }
        params.set_search_options(**options)
        gen = og.Generator(self.model, params)
        gen.append_tokens(np.asarray([ids], np.int32))
        new: list[int] = []
        while not gen.is_done():
            gen.generate_next_token()
            token = int(gen.get_next_tokens()[0])
            new.append(token)
            reason = None
            if token in c.eos_token_ids:
                reason = "eos"
            elif c.stop_strings and any(x in self.decode(new) for x in c.stop_strings):
                reason = "stop_string"
            elif len(new) >= total - len(ids):
                reason = "length"
            yield new, reason
            if reason:
                return
        yield new, "length"
