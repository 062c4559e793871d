"""The openvino-genai backend: OpenVINO GenAI's ``LLMPipeline`` on the same weights.

OpenVINO 2026.4.1 cannot read the opset-24 decoder (``convert_model`` of ``model.onnx``
stops at "No conversion rule found for operations: TensorScatter-24" and "Conversion is
failed for: Attention-24"), so this backend converts the transformers module that the
folder's ``pipeline.json`` names (the seeded recipe, checked against ``model.onnx``'s
shapes, as the transformers backend does) into the folder ``LLMPipeline`` loads:

- ``openvino.convert_model`` traces a thin wrapper whose inputs are what ``LLMPipeline``
  feeds (``input_ids``, ``attention_mask``, ``position_ids``, one past key and value per
  layer) and whose outputs are ``logits`` and the grown cache;
- a ``beam_idx`` input gathers every past along the batch, and
  ``apply_make_stateful_transformation`` turns each past/present pair into a state
  (``ReadValue``/``Assign``) whose initial value is an empty cache of the batch's size;
- ``openvino_tokenizers.convert_tokenizer`` converts the folder's ``tokenizer.json``.

MoE decoders (Qwen3-MoE, Mixtral) are traced with transformers' ``batched_mm`` experts: the
eager routing loops over ``nonzero()`` per expert, and the trace would keep the example's
token counts (OpenVINO then fails in a ``Split`` on any other prompt).

The pipeline runs in float32 with a float32 KV cache (``INFERENCE_PRECISION_HINT``,
``KV_CACHE_PRECISION``: on a CPU with bf16, the default precisions change greedy tokens
after a dozen steps), on OpenVINO GenAI's default (paged) attention backend, whose
prefill of a long prompt is much faster here than ``ATTENTION_BACKEND=SDPA``'s. Sliding-window models are refused
(transformers' sliding cache layer does not trace). One prompt runs on ``LLMPipeline``, a
batch on ``ContinuousBatchingPipeline`` (the same engine; it takes prompts of any lengths).
Neither is incremental: the generator runs the whole generation when the prompts arrive
and hands the tokens out one per step; the finish reasons come from
``reference.finish_reason``, as for every other backend.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from generator.errors import UsageError
from proposals.text_pipeline.backends.transformers import folder_model
from proposals.text_pipeline.build import decoder_spec, refuse_recurrent, spec_from_model
from proposals.text_pipeline.config import GenerationConfig
from proposals.text_pipeline.factory import Device, register_backend
from proposals.text_pipeline.folder import ModelFolder, special_tokens
from proposals.text_pipeline.generation import SequenceState
from proposals.text_pipeline.pipeline import Pipeline
from proposals.text_pipeline.reference import Decode, check_context, finish_reason
from proposals.text_pipeline.tokenizer import load_tokenizer

NAME = "openvino-genai"
PROPERTIES = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}


def _traceable(hf_model):
    """The causal LM as a module of plain tensors: ``(input_ids, attention_mask,
    position_ids, *pasts) -> (logits, *presents)`` (what ``LLMPipeline`` feeds and reads)."""
    import torch
    from transformers.cache_utils import DynamicCache

    class Stateless(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, position_ids, *pasts):
            cache = DynamicCache(config=self.model.config)
            for i, layer in enumerate(cache.layers):
                # Set, not update(): update() starts from an empty tensor that the
                # OpenVINO frontend cannot concatenate.
                layer.device = input_ids.device
                layer.keys, layer.values, layer.is_initialized = pasts[2 * i], pasts[2 * i + 1], True
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, cache=cache)
            return (out.logits, *[t for layer in out.cache.layers for t in (layer.keys, layer.values)])

    return Stateless(hf_model).eval()


# --8<-- [start:convert]
def openvino_model(hf_model):
    """A stateful ``openvino.Model`` of a transformers causal LM, in ``LLMPipeline``'s form."""
    import openvino as ov
    import torch
    from openvino import opset13 as ops
    from openvino._offline_transformations import apply_make_stateful_transformation

    spec = decoder_spec(hf_model.config)
    if spec.circular:  # transformers' sliding-window cache layer does not trace to a graph
        raise UsageError(
            f"the openvino-genai backend does not convert sliding-window models ({spec.model_type}, "
            f"sliding_window={spec.sliding_window}); supported: models without a sliding window"
        )
    hf_model.set_attn_implementation("sdpa")  # traced as ScaledDotProductAttention
    if hf_model._can_set_experts_implementation():  # noqa: SLF001 - transformers' only check for MoE blocks
        # eager MoE routing splits by nonzero(): the trace would keep the example's expert counts
        hf_model.set_experts_implementation("batched_mm")
    kv_shape = [-1, spec.num_kv_heads, -1, spec.head_dim]
    past = torch.zeros(1, spec.num_kv_heads, 3, spec.head_dim)
    example = (torch.tensor([[5, 6]]), torch.ones(1, 5, dtype=torch.int64), torch.tensor([[3, 4]]))
    with torch.no_grad():
        model = ov.convert_model(_traceable(hf_model), example_input=example + (past,) * (2 * spec.num_layers))
    kv = [f"{k}.{i}" for i in range(spec.num_layers) for k in ("key", "value")]
    for port, name in zip(
        model.inputs, ["input_ids", "attention_mask", "position_ids", *[f"past.{n}" for n in kv]], strict=True
    ):
        port.get_tensor().set_names({name})
    for port, name in zip(model.outputs, ["logits", *[f"present.{n}" for n in kv]], strict=True):
        port.get_tensor().set_names({name})
    beam_idx = ops.parameter([-1], ov.Type.i32, name="beam_idx")
    beam_idx.output(0).get_tensor().set_names({"beam_idx"})
    for port in model.inputs[3:]:
        port.get_node().set_partial_shape(ov.PartialShape(kv_shape))
        consumers = list(port.get_target_inputs())  # before the Gather becomes one
        reordered = ops.gather(port.get_node(), beam_idx, ops.constant(0))
        for consumer in consumers:
            consumer.replace_source_output(reordered.output(0))
    model.add_parameters([beam_idx])
    model.validate_nodes_and_infer_types()
    apply_make_stateful_transformation(model, {f"past.{n}": f"present.{n}" for n in kv})
    # Each state starts as an empty cache with the batch of input_ids (not batch 0).
    shape = ops.shape_of(model.input("input_ids"), output_type="i64")
    batch = ops.gather(shape, ops.constant(np.array([0], np.int64)), ops.constant(0))
    empty = ops.concat([batch, ops.constant(np.array([spec.num_kv_heads, 0, spec.head_dim], np.int64))], 0)
    for node in model.get_ops():
        if node.get_type_name() == "ReadValue":
            node.set_arguments([ops.broadcast(ops.constant(np.float32(0)), empty)])
    model.validate_nodes_and_infer_types()
    return model


# --8<-- [end:convert]


def write_openvino_folder(folder: ModelFolder, target: Path, hf_model=None) -> None:
    """``openvino_model.xml``, ``openvino_tokenizer.xml``, ``openvino_detokenizer.xml`` and
    ``config.json`` in ``target``, from the folder's transformers recipe (or ``hf_model``, the
    module the folder's decoder was built from) and its tokenizer."""
    import openvino as ov
    from openvino_tokenizers import convert_tokenizer
    from transformers import PreTrainedTokenizerFast

    if hf_model is None:
        hf_model = folder_model(folder)  # the folder's weights, checked
    elif decoder_spec(hf_model.config) != spec_from_model(folder.decoder):
        raise UsageError(
            f"{folder.path}: the transformers module given does not describe model.onnx (shapes differ); "
            "rebuild the folder"
        )
    ov.save_model(openvino_model(hf_model), target / "openvino_model.xml")
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=load_tokenizer(folder.tokenizer_json),
        eos_token=special_tokens(folder)["eos"],
        pad_token=special_tokens(folder)["pad"],
    )
    tokenizer, detokenizer = convert_tokenizer(hf_tokenizer, with_detokenizer=True)
    ov.save_model(tokenizer, target / "openvino_tokenizer.xml")
    ov.save_model(detokenizer, target / "openvino_detokenizer.xml")
    (target / "config.json").write_text(json.dumps(hf_model.config.to_dict(), default=str))


# --8<-- [start:native_gguf]
GGUF_NATIVE = ("llama", "qwen2", "qwen3")  # the architectures OpenVINO GenAI's GGUF reader takes


def native_gguf(folder: ModelFolder) -> Path | None:
    """The GGUF checkpoint an exported folder came from (sha256 checked) when OpenVINO GenAI
    reads its architecture natively; None for a zoo folder. Any other GGUF architecture is
    converted from the same float32 weights, which stops at a sliding window (refused in
    ``openvino_model``, naming both reasons)."""
    from proposals.text_pipeline.export import Source, source_checkpoint

    if "source" not in folder.manifest:
        return None
    where = str(folder.path / "pipeline.json")
    source = Source.from_json(folder.manifest["source"], where)
    if source.kind != "gguf":
        return None
    if source.architecture in GGUF_NATIVE:
        return source_checkpoint(source, where)
    spec = spec_from_model(folder.decoder)
    if spec.circular:
        raise UsageError(
            f"the openvino-genai backend cannot run {source.file}: OpenVINO GenAI reads GGUF for "
            f"{', '.join(GGUF_NATIVE)} only (this is {source.architecture}), and converting its float32 weights "
            f"stops at the sliding window ({spec.sliding_window} tokens: transformers' sliding cache "
            "layer does not trace); supported: GGUF llama, qwen2, qwen3, or models without a sliding window"
        )
    return None


# --8<-- [end:native_gguf]


class OpenVinoGenaiEngine:
    """``LLMPipeline`` for one prompt and ``ContinuousBatchingPipeline`` (the same paged
    engine, which takes a list of token-id prompts of any lengths) for a batch, both loaded
    from one converted copy of the folder; ``LLMPipeline`` on this backend refuses a
    ``[batch, seq]`` tensor ("Use multiple tensors to pass a batch")."""

    def __init__(self, folder: ModelFolder, properties: dict, hf_model=None) -> None:
        import openvino as ov
        import openvino_genai as ovg

        self.ov, self.ovg = ov, ovg
        self.spec = spec_from_model(folder.decoder)
        refuse_recurrent(
            self.spec, "openvino-genai", "cannot convert the gated-delta layers (aten::linalg_solve_triangular)"
        )
        gguf = native_gguf(folder) if hf_model is None else None
        if gguf is not None:  # OpenVINO GenAI reads the folder's source checkpoint itself
            self.pipe = ovg.LLMPipeline(str(gguf), "CPU", scheduler_config=self.scheduler(), **properties)
            self.batched = ovg.ContinuousBatchingPipeline(str(gguf), self.scheduler(), "CPU", properties)
            return
        with tempfile.TemporaryDirectory(prefix="ovgenai-") as scratch:  # read only while loading
            write_openvino_folder(folder, Path(scratch), hf_model)
            self.pipe = ovg.LLMPipeline(scratch, "CPU", scheduler_config=self.scheduler(), **properties)
            self.batched = ovg.ContinuousBatchingPipeline(scratch, self.scheduler(), "CPU", properties)

    def scheduler(self):
        """No prefix caching (a repeated prompt costs what it costs the first time, as on
        every other backend) and the whole prefill in one step, up to the context."""
        config = self.ovg.SchedulerConfig()
        config.enable_prefix_caching = False
        config.max_num_batched_tokens = max(config.max_num_batched_tokens, 8 * self.spec.max_positions)
        return config

    def generator(self, config: GenerationConfig, decode: Decode, batch_size: int) -> OpenVinoGenaiGenerator:
        return OpenVinoGenaiGenerator(self, config, decode, batch_size)

    def beam_search(self, prompt: Sequence[int], config: GenerationConfig) -> list:
        raise UsageError("beam search on the openvino-genai backend is not wired here; use onnxruntime")

    def options(self, config: GenerationConfig, budget: int):
        """OpenVINO GenAI's ``GenerationConfig`` for a row with ``budget`` new tokens."""
        s = config.sampling_config
        options = self.ovg.GenerationConfig()
        options.max_new_tokens = budget
        options.min_new_tokens = min(config.min_new_tokens, budget)
        options.stop_token_ids = set(config.eos_token_ids)
        options.do_sample = s.do_sample
        if s.do_sample:
            options.temperature, options.top_p, options.top_k = s.temperature, s.top_p, s.top_k or 0
            options.rng_seed = s.rng_seed
        options.repetition_penalty = s.repetition_penalty
        return options

    def run(self, prompts: list[list[int]], options: list) -> tuple[list[list[int]], float]:
        """Each prompt's new tokens, and the time to first token OpenVINO GenAI measured
        (seconds; the batch's latest)."""
        if len(prompts) == 1:
            result = self.pipe.generate(self.ov.Tensor(np.asarray(prompts, np.int64)), options[0])
            return [list(map(int, result.tokens[0]))], result.perf_metrics.get_ttft().mean / 1e3
        tensors = [self.ov.Tensor(np.asarray([p], np.int64)) for p in prompts]
        results = self.batched.generate(tensors, options)
        ttft = max(r.perf_metrics.get_ttft().mean for r in results) / 1e3
        return [list(map(int, r.m_generation_ids[0])) for r in results], ttft


class OpenVinoGenaiGenerator:
    """``Text2Text::Generator`` over OpenVINO GenAI: the whole batch (any prompt lengths) is
    generated when the prompts arrive, each row to its own budget; tokens are then handed
    out one per ``generate_next_token``."""

    def __init__(self, engine: OpenVinoGenaiEngine, config: GenerationConfig, decode: Decode, batch_size: int) -> None:
        if config.beam_search_config.num_beams > 1:
            raise UsageError("beam search on the openvino-genai backend is not wired here; use onnxruntime")
        self.engine, self.config, self.decode = engine, config, decode
        self.seqs = [SequenceState() for _ in range(batch_size)]
        self._planned: list[list[int]] = []
        self._budgets: list[int] = []
        self._started = False

    def append_input_tokens(self, tokens: Sequence[Sequence[int]]) -> None:
        if self._started:
            raise UsageError("the openvino-genai backend takes the prompts once per generator")
        if len(tokens) != len(self.seqs):
            raise UsageError(f"append_input_tokens got {len(tokens)} token lists for a batch of {len(self.seqs)}")
        ids = [list(map(int, t)) for t in tokens]
        check_context([len(i) for i in ids], self.engine.spec.max_positions)
        room = [self.engine.spec.max_positions - len(i) for i in ids]
        budgets = [self.config.new_token_budget(len(i)) for i in ids]
        self._budgets = [r if b is None else min(r, b) for r, b in zip(room, budgets, strict=True)]
        self._planned = [[] for _ in ids]
        rows = [r for r, budget in enumerate(self._budgets) if budget > 0]
        if rows:
            options = [self.engine.options(self.config, self._budgets[r]) for r in rows]
            planned, _ = self.engine.run([ids[r] for r in rows], options)
            for r, out in zip(rows, planned, strict=True):
                self._planned[r] = out
        for seq, prompt, budget in zip(self.seqs, ids, self._budgets, strict=True):
            seq.history, seq.prompt_len = list(prompt), len(prompt)
            seq.finish_reason = "length" if budget <= 0 else None
        self._started = True

    def generate_next_token(self) -> list[int | None]:
        if not self._started:
            raise UsageError("generate_next_token called before append_input_tokens")
        if self.is_done():
            raise UsageError("generate_next_token called after the generator is done")
        out: list[int | None] = []
        for seq, planned, budget in zip(self.seqs, self._planned, self._budgets, strict=True):
            if seq.finish_reason is not None:
                out.append(None)
                continue
            step = len(seq.new_tokens)
            if step >= len(planned):  # OpenVINO GenAI stopped the row without its stop token
                seq.finish_reason = "eos" if planned and planned[-1] in self.config.eos_token_ids else "length"
                out.append(None)
                continue
            token = planned[step]
            seq.new_tokens.append(token)
            seq.history.append(token)
            seq.finish_reason = finish_reason(seq.new_tokens, self.config, self.decode, budget)
            out.append(token)
        return out

    def is_done(self) -> bool:
        return self._started and all(s.finish_reason is not None for s in self.seqs)


def create(model_dir: Path, device: Device) -> Pipeline:
    folder = ModelFolder.read(model_dir)
    engine = OpenVinoGenaiEngine(folder, dict(device.config["properties"]))
    return Pipeline(engine, load_tokenizer(folder.tokenizer_json), folder.config)


def devices() -> list[Device]:
    return [Device("CPU", {"properties": PROPERTIES})]


register_backend(NAME, create, devices)


def onnx_conversion_failure(arch: str = "llama") -> str:
    """The summary OpenVINO's ONNX frontend gives for the opset-24 decoder (why this backend
    converts the transformers module instead)."""
    import openvino as ov

    from proposals.text_pipeline.folder import write_folder

    with tempfile.TemporaryDirectory(prefix="ov-onnx-") as scratch:
        model = write_folder(arch, Path(scratch)) / "model.onnx"
        try:
            ov.convert_model(str(model))
        except Exception as err:  # OpConversionFailure, whose text lists every failed op
            lines = str(err).splitlines()
            return "\n".join(line for line in lines[lines.index("Summary:") :] if line.strip())
    return "converted"
