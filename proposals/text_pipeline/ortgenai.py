"""The onnxruntime-genai backend: the same decoder run by ORT GenAI's own generator.

ORT GenAI 0.18 knows nothing of ``write_indices``: it feeds ``input_ids``,
``position_ids`` and the ``past_*`` buffers named in ``genai_config.json``, and with
``past_present_share_buffer`` it binds one ``[batch, kv_heads, max_length, head_dim]``
buffer as both past and present, which is exactly the TensorScatter in-place pattern.
So the adapter below replaces the ``write_indices`` input with ``position_ids`` and
reads the write index as ``position_ids[:, 0]``. Checked with 0.18.0: token-identical to
transformers for the linear and the circular (sliding-window) cache (the buffer takes
the decoder's fixed window length), and for ragged batches when they are right-padded
with the pad token: ORT GenAI then gives each row's next token the position of the row's
real length, so each row writes at its own slot, as ``write_indices`` does.
A left-padded array is not read as padding: ORT GenAI feeds an all-ones attention mask
and continuous positions, so the pads become prompt tokens. And ORT GenAI prefills the
whole prompt in one run, so a circular cache only takes prompts up to the window.
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
from proposals.text_pipeline.build import spec_from_model
from proposals.text_pipeline.config import GenerationInput, GenerationResult
from proposals.text_pipeline.generator import check_context
from proposals.text_pipeline.pipeline import ModelFolder, Pipeline, _cut_after_stop
from proposals.text_pipeline.tokenizer import EOS_TOKEN, PAD_TOKEN, load_tokenizer

PAD_ID = 1  # PAD_TOKEN's id in the shipped tokenizer


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
            "pad_token_id": PAD_ID,
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
    """``Text2Text::Pipeline`` run by onnxruntime-genai's own generator and search.

    Batches are right-padded with the pad token: ORT GenAI then derives each row's
    positions from its real length, so the adapted decoder writes every row at its own
    cache slot. The EOS ids ORT GenAI itself stops at are the folder's defaults.
    """

    def __init__(self, folder: ModelFolder) -> None:
        import onnxruntime_genai as og

        self.spec = spec_from_model(folder.decoder)
        self._dir = tempfile.TemporaryDirectory(prefix="ortgenai-")
        write_genai_folder(folder, Path(self._dir.name))
        self.og = og
        self.model = og.Model(self._dir.name)
        super().__init__(None, load_tokenizer(folder.tokenizer_json), folder.config)

    def generate(self, prompts: Sequence[GenerationInput]) -> list[GenerationResult]:
        if not prompts:
            raise UsageError("generate needs at least one GenerationInput")
        new, reasons = list(self._run(prompts))[-1]  # the state after the last step
        results = []
        for tokens, reason in zip(new, reasons, strict=True):
            text = self._text(tokens, reason)
            results.append(GenerationResult(text, tuple(tokens), reason or "length", (text,)))
        return results

    def stream(self, prompt: GenerationInput) -> Iterator[str]:
        shown = ""
        for new, reasons in self._run([prompt]):
            text = self._text(new[0], reasons[0])
            if text != shown and (reasons[0] or not text.endswith("\ufffd")):
                yield text[len(shown) :]
                shown = text

    def generator(self, prompts):
        raise UsageError("the onnxruntime-genai backend runs its own og.Generator; use __call__, generate or stream")

    def _text(self, tokens, reason) -> str:
        text = self.decode(tokens)
        return _cut_after_stop(text, self.config.stop_strings) if reason == "stop_string" else text

    def _run(self, prompts: Sequence[GenerationInput]):
        """Yield (new tokens per row, finish reason or None per row) after every step."""
        c = self.config
        if c.beam_search_config.num_beams > 1:
            raise UsageError("beam search on the onnxruntime-genai backend is not wired here; use onnxruntime")
        ids = [self.encode(p) for p in prompts]
        check_context([len(i) for i in ids], self.spec.max_positions)
        width = max(map(len, ids))
        if self.spec.circular and width > self.spec.sliding_window:
            raise UsageError(
                f"onnxruntime-genai prefills the whole prompt in one run; {width} tokens do not fit "
                f"the circular cache of sliding_window={self.spec.sliding_window} (use onnxruntime)"
            )
        room = self.spec.max_positions - width
        budgets = [min(room, b) if (b := c.new_token_budget(len(i))) is not None else room for i in ids]
        new: list[list[int]] = [[] for _ in ids]
        reasons: list[str | None] = ["length" if b <= 0 else None for b in budgets]
        if all(reasons):
            yield new, reasons
            return
        gen = self.og.Generator(self.model, self._params(width, max(budgets), len(ids)))
        gen.append_tokens(np.array([i + [PAD_ID] * (width - len(i)) for i in ids], np.int32))
        while not gen.is_done() and not all(reasons):
            gen.generate_next_token()
            for row, token in enumerate(int(t) for t in gen.get_next_tokens()):
                if reasons[row] is None:
                    new[row].append(token)
                    reasons[row] = self._finish_reason(new[row], budgets[row])
            yield new, reasons

    def _params(self, width: int, budget: int, batch: int):
        c, s = self.config, self.config.sampling_config
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(
            max_length=width + budget,
            min_length=width + c.min_new_tokens,  # ORT GenAI counts the padded length
            batch_size=batch,
            do_sample=s.do_sample,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k or self.spec.vocab_size,
            repetition_penalty=s.repetition_penalty,
            random_seed=s.rng_seed,
        )
        return params

    def _finish_reason(self, tokens: list[int], budget: int) -> str | None:
        c = self.config
        if tokens[-1] in c.eos_token_ids:
            return "eos"
        if c.stop_strings and len(tokens) >= c.min_new_tokens:
            if any(x in self.decode(tokens) for x in c.stop_strings):
                return "stop_string"
        return "length" if len(tokens) >= budget else None
