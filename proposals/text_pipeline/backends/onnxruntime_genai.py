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
ORT GenAI 0.18 allocates one buffer shape for every layer, so a decoder that mixes
circular and linear caches (Gemma 2/3) is loaded with its sliding layers as linear buffers
read through a window mask (``masked_window.masked_linear``); it then takes any prompt in
one run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes
from onnxscript import TapeBuilder

from generator.errors import UsageError
from proposals.text_pipeline.build import DecoderSpec, refuse_recurrent, spec_from_model
from proposals.text_pipeline.config import GenerationConfig
from proposals.text_pipeline.factory import Device, register_backend
from proposals.text_pipeline.folder import ModelFolder, special_tokens
from proposals.text_pipeline.generation import SequenceState
from proposals.text_pipeline.masked_window import masked_linear
from proposals.text_pipeline.pipeline import Pipeline
from proposals.text_pipeline.reference import Decode, check_context, finish_reason
from proposals.text_pipeline.tokenizer import load_tokenizer

NAME = "onnxruntime-genai"


# ORT GenAI 0.18 refuses model types outside its fixed list ("Unsupported model_type in
# config.json: qwen3_moe"). The graph it runs is the one in model.onnx whatever the type,
# so an MoE decoder is declared as its dense sibling (token-identical: test_moe_decoders),
# and OLMo-2 as OLMo (test_interface).
GENAI_MODEL_TYPES = {"qwen3_moe": "qwen3", "mixtral": "mistral", "olmo2": "olmo"}


# --8<-- [start:adapter]
class PositionIdsInput(onnx_ir.passes.InPlacePass):
    """The ``write_indices [batch]`` input replaced by ``position_ids [batch, seq]`` (what
    ORT GenAI feeds), with ``write_indices = position_ids[:, 0]`` computed in the graph."""

    def call(self, model: ir.Model) -> onnx_ir.passes.PassResult:
        graph = model.graph
        write_indices = next(v for v in graph.inputs if v.name == "write_indices")
        position_ids = ir.val("position_ids", ir.DataType.INT64, ["batch", "seq"])
        op = TapeBuilder()
        first_position = op.initializer(ir.tensor(0, dtype=ir.DataType.INT64), "first_position")
        first_column = op.Gather(position_ids, first_position, axis=1, _name="write_indices_node")
        graph.insert_before(graph.node(0), op.nodes)
        graph.register_initializer(first_position)
        write_indices.replace_all_uses_with(first_column)
        graph.inputs.remove(write_indices)
        graph.inputs.insert(1, position_ids)  # after input_ids, as ORT GenAI lists them
        first_column.name = "write_indices"
        return onnx_ir.passes.PassResult(model, modified=True)


def position_ids_decoder(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run :class:`PositionIdsInput` on a copy of the decoder."""
    adapted = PositionIdsInput()(ir.serde.deserialize_model(model)).model
    return ir.serde.serialize_model(adapted)


def genai_config(model: onnx.ModelProto, eos_token_ids: Sequence[int], tokenizer, tokens: dict[str, str]) -> dict:
    """``genai_config.json`` for the adapted decoder (shared past/present buffers); the BOS
    and pad ids are the tokenizer's own (``tokens``: the folder's ``special_tokens``)."""
    spec = spec_from_model(model)
    return {
        "model": {
            "type": GENAI_MODEL_TYPES.get(spec.model_type, spec.model_type),
            "context_length": spec.max_positions,
            "vocab_size": spec.vocab_size,
            "bos_token_id": tokenizer.token_to_id(tokens["bos"]),
            "eos_token_id": sorted(eos_token_ids),
            "pad_token_id": tokenizer.token_to_id(tokens["pad"]),
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
    tokenizer = load_tokenizer(folder.tokenizer_json)
    tokens = special_tokens(folder)
    eos = sorted(folder.config.eos_token_ids) or [tokenizer.token_to_id(tokens["eos"])]
    # ORT GenAI 0.18 binds one cache shape to every layer: mixed decoders' rings become masked linear buffers
    onnx.save(position_ids_decoder(masked_linear(folder.decoder)), target / "model.onnx")
    for location in external_locations(folder):  # the folder's own data file, linked (ORT refuses symlinks)
        source = folder.external_data / location
        try:
            os.link(source, target / location)
        except OSError:  # another file system: copied
            shutil.copyfile(source, target / location)
    (target / "tokenizer.json").write_bytes(folder.tokenizer_json)
    (target / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "bos_token": tokens["bos"],
                "eos_token": tokens["eos"],
                "pad_token": tokens["pad"],
            }
        )
    )
    (target / "genai_config.json").write_text(
        json.dumps(genai_config(folder.decoder, eos, tokenizer, tokens), indent=2)
    )


def external_locations(folder: ModelFolder) -> set[str]:
    """The external data files the folder's decoder names (none for a zoo folder)."""
    if folder.external_data is None:
        return set()
    return {
        e.value
        for t in folder.decoder.graph.initializer
        if t.data_location == onnx.TensorProto.EXTERNAL
        for e in t.external_data
        if e.key == "location"
    }


class OrtGenaiEngine:
    """The engine of this backend: one ``og.Model`` loaded from an adapted copy of the folder,
    a fresh ``og.Generator`` (wrapped as ``OrtGenaiGenerator``) per generation."""

    def __init__(self, folder: ModelFolder) -> None:
        import onnxruntime_genai as og

        self.og = og
        self.spec = spec_from_model(folder.decoder)
        refuse_recurrent(self.spec, "onnxruntime-genai", "binds past_key/past_value only")
        self.pad_id = load_tokenizer(folder.tokenizer_json).token_to_id(special_tokens(folder)["pad"])
        with tempfile.TemporaryDirectory(prefix="ortgenai-") as scratch:  # read only while loading
            write_genai_folder(folder, Path(scratch))
            self.model = og.Model(scratch)

    def generator(self, config: GenerationConfig, decode: Decode, batch_size: int) -> OrtGenaiGenerator:
        return OrtGenaiGenerator(self, config, decode, batch_size)

    def beam_search(self, prompt: Sequence[int], config: GenerationConfig) -> list:
        raise UsageError("beam search on the onnxruntime-genai backend is not wired here; use onnxruntime")


class OrtGenaiGenerator:
    """``Text2Text::Generator`` over ``og.Generator``: ORT GenAI searches and samples; the
    finish reasons come from ``reference.finish_reason``, as for every other backend.

    The batch is right-padded with the tokenizer's pad token: ORT GenAI then derives each
    row's positions from its real length, so the adapted decoder writes every row at its own
    cache slot. ORT GenAI takes the prompts once (``append_input_tokens`` is called once).
    """

    def __init__(self, engine: OrtGenaiEngine, config: GenerationConfig, decode: Decode, batch_size: int) -> None:
        if config.beam_search_config.num_beams > 1:
            raise UsageError("beam search on the onnxruntime-genai backend is not wired here; use onnxruntime")
        self.engine, self.config, self.decode = engine, config, decode
        self.seqs = [SequenceState() for _ in range(batch_size)]
        self._gen = None
        self._budgets: list[int] = []
        self._started = False

    def append_input_tokens(self, tokens: Sequence[Sequence[int]]) -> None:
        """Feed the right-padded prompts to a new ``og.Generator``."""
        spec: DecoderSpec = self.engine.spec
        if self._started:
            raise UsageError("the onnxruntime-genai backend takes the prompts once per generator")
        if len(tokens) != len(self.seqs):
            raise UsageError(f"append_input_tokens got {len(tokens)} token lists for a batch of {len(self.seqs)}")
        ids = [list(map(int, t)) for t in tokens]
        check_context([len(i) for i in ids], spec.max_positions)
        width = max(map(len, ids))
        if spec.circular and not spec.mixed and width > spec.sliding_window:
            raise UsageError(
                f"onnxruntime-genai prefills the whole prompt in one run; {width} tokens do not fit "
                f"the circular cache of sliding_window={spec.sliding_window} (use onnxruntime)"
            )
        room = spec.max_positions - width
        self._budgets = [min(room, b) if (b := self.config.new_token_budget(len(i))) is not None else room for i in ids]
        for seq, prompt, budget in zip(self.seqs, ids, self._budgets, strict=True):
            seq.history, seq.prompt_len = list(prompt), len(prompt)
            seq.finish_reason = "length" if budget <= 0 else None
        self._started = True
        if not self.is_done():
            self._gen = self.engine.og.Generator(self.engine.model, self._params(width, max(self._budgets), len(ids)))
            pad = self.engine.pad_id
            self._gen.append_tokens(np.array([i + [pad] * (width - len(i)) for i in ids], np.int32))

    def generate_next_token(self) -> list[int | None]:
        if not self._started:
            raise UsageError("generate_next_token called before append_input_tokens")
        if self.is_done():
            raise UsageError("generate_next_token called after the generator is done")
        self._gen.generate_next_token()
        out: list[int | None] = []
        for seq, budget, token in zip(self.seqs, self._budgets, self._gen.get_next_tokens(), strict=True):
            if seq.finish_reason is not None:
                out.append(None)
                continue
            seq.new_tokens.append(int(token))
            seq.history.append(int(token))
            seq.finish_reason = finish_reason(seq.new_tokens, self.config, self.decode, budget)
            out.append(int(token))
        if self._gen.is_done():  # ORT GenAI's own max_length: whatever still runs ends here
            for seq in self.seqs:
                seq.finish_reason = seq.finish_reason or "length"
        return out

    def is_done(self) -> bool:
        return self._started and all(s.finish_reason is not None for s in self.seqs)

    def _params(self, width: int, budget: int, batch: int):
        c, s = self.config, self.config.sampling_config
        params = self.engine.og.GeneratorParams(self.engine.model)
        params.set_search_options(
            max_length=width + budget,
            min_length=width + c.min_new_tokens,  # ORT GenAI counts the padded length
            batch_size=batch,
            do_sample=s.do_sample,
            temperature=s.temperature,
            top_p=s.top_p,
            top_k=s.top_k or self.engine.spec.vocab_size,
            repetition_penalty=s.repetition_penalty,
            random_seed=s.rng_seed,
        )
        return params


def create(model_dir: Path, device: Device) -> Pipeline:
    folder = ModelFolder.read(model_dir)
    return Pipeline(OrtGenaiEngine(folder), load_tokenizer(folder.tokenizer_json), folder.config)


def devices() -> list[Device]:
    return [Device("CPU", {"provider": "cpu"})]


register_backend(NAME, create, devices)
