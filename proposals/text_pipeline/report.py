"""What the proposal page executes: parity tables and the onnxruntime-genai findings,
computed at docs-build time from the same code the tests run."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np
import onnx

from proposals.text_pipeline.backends.onnxruntime_genai import position_ids_decoder, write_genai_folder
from proposals.text_pipeline.build import build_decoder, spec_from_model
from proposals.text_pipeline.config import GenerationConfig
from proposals.text_pipeline.families import ARCHITECTURES, HYBRID_ARCHITECTURES, MOE_ARCHITECTURES, tiny_model
from proposals.text_pipeline.folder import ModelFolder, decoder_bytes, write_folder
from proposals.text_pipeline.generation import Generator
from proposals.text_pipeline.moe_mlp import for_onnxruntime
from proposals.text_pipeline.runners import OrtRunner
from proposals.text_pipeline.tokenizer import PAD_TOKEN, load_tokenizer

PROMPTS = ("The KV cache", "TensorScatter writes the new keys into the static buffer at")


def pad_id() -> int:
    """The tokenizer's pad token id."""
    return load_tokenizer().token_to_id(PAD_TOKEN)


def greedy(runner, prompts: list[list[int]], new: int) -> list[list[int]]:
    gen = Generator(runner, GenerationConfig(max_new_tokens=new), batch_size=len(prompts))
    gen.append_input_tokens(prompts)
    while not gen.is_done():
        gen.generate_next_token()
    return [s.new_tokens for s in gen.seqs]


def hf_greedy(model, prompts: list[list[int]], new: int) -> list[list[int]]:
    """transformers ``generate`` on the left-padded batch."""
    import torch

    width, pad = max(map(len, prompts)), pad_id()
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=new,
            min_new_tokens=new,
            do_sample=False,
            pad_token_id=pad,
            eos_token_id=None,
        )
    return [row[width:].tolist() for row in out]


# --8<-- [start:parity]
@cache  # shown on the proposal page and in its blog post: computed once per build
def parity_table(new_tokens: int = 64, archs: tuple[str, ...] = (*ARCHITECTURES, *HYBRID_ARCHITECTURES)) -> str:
    """Markdown: greedy tokens of the onnxruntime backend vs transformers ``generate``
    (every tiny architecture, or ``archs``)."""
    rows = [
        "| model | cache | prompt lengths | new tokens | identical tokens | max logit diff |",
        "|---|---|---|---|---|---|",
    ]
    return "\n".join(rows + [parity_row(arch, new_tokens) for arch in archs])


@cache  # the hybrids' rows are on the linear-attention page too
def parity_row(arch: str, new_tokens: int = 64) -> str:
    """One architecture's row of :func:`parity_table`."""
    prompts = [load_tokenizer().encode(p).ids for p in PROMPTS]
    model = tiny_model(arch)
    decoder = for_onnxruntime(onnx.load_from_string(decoder_bytes(arch)))  # MoE: the body inlined
    spec = spec_from_model(decoder)
    ours = greedy(OrtRunner(decoder), prompts, new_tokens)
    theirs = hf_greedy(model, prompts, new_tokens)
    same = sum(a == b for x, y in zip(ours, theirs, strict=True) for a, b in zip(x, y, strict=True))
    return (
        f"| {arch} | {cache_kinds(spec)} | {', '.join(str(len(p)) for p in prompts)} | "
        f"2 × {new_tokens} | {same}/{2 * new_tokens} | {_logit_gap(model, decoder):.1e} |"
    )


# --8<-- [end:parity]


def _layers(layers: tuple[int, ...]) -> str:
    return f"layer{'s' * (len(layers) > 1)} {', '.join(map(str, layers))}"


def cache_kinds(spec) -> str:
    """The decoder's cache buffers in words (mixed ones name their linear layers, a hybrid
    its recurrent ones)."""
    if spec.recurrent_layers:
        return (
            f"linear on {_layers(spec.attention_layers)} + conv and recurrent state on {_layers(spec.recurrent_layers)}"
        )
    if spec.mixed:
        full = ", ".join(map(str, spec.full_layers))
        return f"circular (window {spec.sliding_window}) + linear on layer{'s' * (len(spec.full_layers) > 1)} {full}"
    return f"circular, window {spec.sliding_window}" if spec.circular else "linear"


def _logit_gap(model, decoder) -> float:
    """Largest |logit difference| over a 24-token prefill, ORT vs transformers."""
    import torch

    tokens = [(11 * i + 2) % 500 for i in range(24)]
    runner = OrtRunner(decoder)
    runner.start(1, 32)
    runner.append([tokens[:-1]])
    ours = runner.append([[tokens[-1]]])[0]
    with torch.no_grad():
        theirs = model(torch.tensor([tokens])).logits[0, -1].numpy()
    return float(np.abs(ours - theirs).max())


def ortgenai_unadapted_error() -> str:
    """The error ORT GenAI 0.18 gives on the decoder as built (no ``write_indices`` fed)."""
    import onnxruntime_genai as og

    with tempfile.TemporaryDirectory() as scratch:
        model = _genai_model("llama", Path(scratch), decoder=lambda built: built)  # the unadapted graph
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=16)
        generator = og.Generator(model, params)
        try:
            generator.append_tokens(np.array([[5, 6, 7]], np.int32))
        except RuntimeError as err:
            return str(err).strip()
    return "(no error)"


def _genai_model(arch: str, scratch: Path, decoder: Callable[[onnx.ModelProto], onnx.ModelProto] | None = None):
    """ORT GenAI on the backend's folder for ``arch``; ``decoder`` (of the zoo's decoder)
    replaces the model the folder writer adapted, to show what that adaptation avoids."""
    import onnxruntime_genai as og

    folder = ModelFolder.read(write_folder(arch, scratch / "zoo"))
    target = scratch / "genai"
    target.mkdir()
    write_genai_folder(folder, target)
    if decoder is not None:
        onnx.save(decoder(folder.decoder), target / "model.onnx")
    _quiet(target)
    return og.Model(str(target))


def _quiet(target: Path) -> None:
    """Errors shown on the page are the point: keep onnxruntime's own copy off stderr."""
    config = json.loads((target / "genai_config.json").read_text())
    config["model"]["decoder"]["session_options"]["log_severity_level"] = 4
    (target / "genai_config.json").write_text(json.dumps(config))


def _genai_run(model, rows: list[list[int]], new: int) -> list[list[int]]:
    import onnxruntime_genai as og

    width = max(map(len, rows))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=width + new, batch_size=len(rows))
    gen = og.Generator(model, params)
    gen.append_tokens(np.array(rows, np.int32))
    while not gen.is_done():
        gen.generate_next_token()
    return [list(map(int, gen.get_sequence(i)))[width:] for i in range(len(rows))]


def ortgenai_batch_check() -> str:
    """ORT GenAI on a ragged batch, left- and right-padded, vs each prompt alone."""
    short, long = [5, 6, 7], [8, 9, 10, 11, 12, 13]
    pad = [pad_id()] * (len(long) - len(short))
    with tempfile.TemporaryDirectory() as scratch:
        model = _genai_model("llama", Path(scratch))
        alone = _genai_run(model, [short], 8)[0]
        left = _genai_run(model, [pad + short, long], 8)[0]
        right = _genai_run(model, [short + pad, long], 8)[0]
    return "\n".join(
        [
            f"short prompt alone:        {alone}",
            f"in a left-padded batch:    {left}  -> {'same' if left == alone else 'DIFFERENT'}",
            f"in a right-padded batch:   {right}  -> {'same' if right == alone else 'DIFFERENT'}",
        ]
    )


def ortgenai_long_prompt_error() -> str:
    """ORT GenAI prefilling a 23-token prompt into Mistral's 16-slot circular cache."""
    with tempfile.TemporaryDirectory() as scratch:
        model = _genai_model("mistral", Path(scratch))
        try:
            _genai_run(model, [list(range(2, 25))], 4)
        except RuntimeError as err:
            return str(err).strip()
    return "(no error)"


def ortgenai_mixed_cache_error() -> str:
    """The error ORT GenAI 0.18 gives on Gemma 2's decoder without the masked-window pass."""
    with tempfile.TemporaryDirectory() as scratch:
        model = _genai_model("gemma2", Path(scratch), decoder=position_ids_decoder)  # rings kept
        try:
            _genai_run(model, [[5, 6, 7]], 4)
        except RuntimeError as err:
            return " ".join(str(err).split())
    return "(no error)"


def ortgenai_mixed_cache_check() -> str:
    """ORT GenAI on Gemma 2 (8-slot ring + linear cache), a 23-token prompt, vs transformers."""
    prompt, new = list(range(2, 25)), 10
    with tempfile.TemporaryDirectory() as scratch:
        ours = _genai_run(_genai_model("gemma2", Path(scratch)), [prompt], new)[0]
    theirs = hf_greedy(tiny_model("gemma2"), [prompt], new)[0]
    return "\n".join(
        [
            f"prompt: {len(prompt)} tokens in one run (window 8), {new} new tokens",
            f"onnxruntime-genai: {ours}",
            f"transformers:      {theirs}",
            "identical" if ours == theirs else "DIFFERENT",
        ]
    )


def one_layer_decoder() -> onnx.ModelProto:
    """A one-layer Qwen3 decoder, small enough to draw (q/k norms show too)."""
    return build_decoder(tiny_model("qwen3", num_hidden_layers=1))


# --8<-- [start:moe_parity]
@cache
def moe_parity_table(new_tokens: int = 64) -> str:
    """Markdown: greedy tokens of the MoE decoders on onnxruntime (the MoE function op
    inlined, and substituted by com.microsoft.MoE) and on onnxruntime-genai, vs
    transformers ``generate``."""
    prompts = [load_tokenizer().encode(p).ids for p in PROMPTS]
    rows = [
        f"| model | experts (top-k) | backend | identical tokens (2 × {new_tokens}) | max logit diff |",
        "|---|---|---|---|---|",
    ]
    for arch in MOE_ARCHITECTURES:
        model = tiny_model(arch)
        decoder = onnx.load_from_string(decoder_bytes(arch))
        theirs = hf_greedy(model, prompts, new_tokens)
        config = model.config
        experts = f"{getattr(config, 'num_experts', None) or config.num_local_experts} ({config.num_experts_per_tok})"
        runs = {
            f"onnxruntime `moe={moe}`": (greedy(OrtRunner(prepared), prompts, new_tokens), _logit_gap(model, prepared))
            for moe in ("inline", "substitute")
            for prepared in [for_onnxruntime(decoder, moe)]
        }
        runs["onnxruntime-genai 0.18"] = (_genai_greedy(arch, prompts, new_tokens), None)
        for label, (ours, gap) in runs.items():
            same = sum(a == b for x, y in zip(ours, theirs, strict=True) for a, b in zip(x, y, strict=True))
            rows.append(
                f"| {arch} | {experts} | {label} | {same}/{2 * new_tokens} | {'—' if gap is None else f'{gap:.1e}'} |"
            )
    return "\n".join(rows)


# --8<-- [end:moe_parity]


def _genai_greedy(arch: str, prompts: list[list[int]], new: int) -> list[list[int]]:
    """onnxruntime-genai on the right-padded batch (how it reads a ragged batch)."""
    width = max(map(len, prompts))
    with tempfile.TemporaryDirectory() as scratch:
        model = _genai_model(arch, Path(scratch))
        return _genai_run(model, [p + [pad_id()] * (width - len(p)) for p in prompts], new)


def moe_decoder_ops(arch: str = "qwen3_moe") -> str:
    """The MoE decoder's graph as each onnxruntime mode runs it: the op types per domain."""
    from collections import Counter

    decoder = onnx.load_from_string(decoder_bytes(arch))
    lines = []
    for label, model in [
        ("as built", decoder),
        ("moe=inline", for_onnxruntime(decoder, "inline")),
        ("moe=substitute", for_onnxruntime(decoder, "substitute")),
    ]:
        custom = Counter(f"{n.domain}.{n.op_type}" for n in model.graph.node if n.domain)
        ops = ", ".join(f"{name} × {count}" for name, count in custom.items()) or "standard ops only"
        lines.append(f"{label:15} {len(model.graph.node):3} nodes, {len(model.functions)} functions; {ops}")
    return "\n".join(lines)
