"""Throughput side by side on the packaged checkpoints (``make bench``; ``--quick`` for a
seconds-long smoke run that writes nothing).

Engines, each on the same GGUF checkpoint (SmolLM2-135M-Instruct, Gemma 3 270M):

- float32 weights (the GGUF dequantized): this pipeline with the cache in place
  (``OrtRunner``), the same after the GQA fusion (:mod:`proposals.kv_cache.fusion`),
  onnxruntime-genai on the exported folder, mobius-onnx's GQA and static-cache graphs,
  transformers ``generate``;
- 4-bit weights: mobius-onnx's MatMulNBits graph, openvino-genai reading the GGUF,
  llama.cpp through llama-cpp-python (an optional bench extra).

Every cell (model x prompt length x batch) runs each engine once per round, rounds
interleaved, at least 3, medians reported: time to first token, decode tokens/s (the
batch's tokens after the first), peak RSS of the process after the engine's runs. The roofline
share is the time a decode step must take at the machine's measured read bandwidth (weights
at their precision, plus the cache held) over the measured step. An engine that is not
installed or cannot run a model is skipped with one line; a prompt longer than a model's
context is refused in one line.

The full matrix (prompts of 128, 1,024, 4,096 and, for Gemma, 8,192 tokens; batch 1 and 4;
128 new tokens) is :data:`FULL_CELLS`; ``--cells`` picks a subset (what a 2-core machine can
run in its time), and the result records which cells were measured.
"""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from generator.bench import memory_bandwidth_gbs, write_json
from generator.errors import UsageError
from proposals.text_pipeline.config import GenerationConfig
from proposals.text_pipeline.generation import Generator
from proposals.text_pipeline.mobius_forms import MobiusGqaRunner, MobiusStaticRunner, build_mobius, ort_session
from proposals.text_pipeline.runners import OrtRunner

TOPIC = "text_pipeline"
THREADS = 2
NEW_TOKENS = 128
MODELS = ("smollm2-135m-instruct", "gemma3-270m")
FULL_CELLS = {
    "smollm2-135m-instruct": [(c, b) for c in (128, 1024, 4096) for b in (1, 4)],
    "gemma3-270m": [(c, b) for c in (128, 1024, 4096, 8192) for b in (1, 4)],
}
FLOAT32 = (
    "this pipeline, in place",
    "this pipeline, fused GQA",
    "onnxruntime-genai",
    "mobius GQA",
    "mobius static, in place",
    "transformers",
)
FOUR_BIT = ("mobius 4-bit", "openvino-genai (GGUF)", "llama.cpp (GGUF)")

# One generation: (prompts) -> (seconds to the first token, seconds for the tokens after it).
Run = Callable[[list[list[int]]], tuple[float, float]]


def prompts(context: int, batch: int, vocab: int) -> list[list[int]]:
    """``batch`` deterministic prompts of ``context`` ordinary token ids."""
    return [[(13 * i + 7 * row + 5) % min(vocab, 20000) + 300 for i in range(context)] for row in range(batch)]


def _generator_run(runner, new_tokens: int) -> Run:
    config = GenerationConfig(max_new_tokens=new_tokens)  # no EOS: every run is full length

    def run(ids: list[list[int]]) -> tuple[float, float]:
        start = time.perf_counter()
        gen = Generator(runner, config, batch_size=len(ids))
        gen.append_input_tokens(ids)
        gen.generate_next_token()
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            gen.generate_next_token()
        return first - start, time.perf_counter() - first

    return run


def _greedy_run(runner, new_tokens: int, capacity: int | None = None) -> Run:
    """mobius's runners: batch of equal-length prompts, greedy, no Generator (no reorder)."""

    def run(ids: list[list[int]]) -> tuple[float, float]:
        start = time.perf_counter()
        runner.start(len(ids), capacity or len(ids[0]) + new_tokens)
        logits = runner.append(ids)
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            logits = runner.append([[int(t)] for t in logits.argmax(-1)])
        return first - start, time.perf_counter() - first

    return run


def llama_cpp_run(gguf: Path, new_tokens: int, context: int) -> Run:
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf), n_threads=THREADS, n_ctx=context + new_tokens, n_batch=512, verbose=False)

    def run(ids: list[list[int]]) -> tuple[float, float]:
        if len(ids) != 1:
            raise UsageError("llama.cpp through llama-cpp-python runs one sequence here")
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids[0])
        token = int(llm.scores[llm.n_tokens - 1].argmax())
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            llm.eval([token])
            token = int(llm.scores[llm.n_tokens - 1].argmax())
        return first - start, time.perf_counter() - first

    return run


def openvino_gguf_run(gguf: Path, new_tokens: int) -> Run:
    import openvino_genai as ov_genai

    pipe = ov_genai.LLMPipeline(str(gguf), "CPU", INFERENCE_NUM_THREADS=THREADS)
    config = ov_genai.GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    def run(ids: list[list[int]]) -> tuple[float, float]:
        if len(ids) != 1:
            raise UsageError("openvino-genai's LLMPipeline runs one sequence here")
        import numpy as np
        import openvino as ov

        tokens = ov.Tensor(np.asarray(ids, np.int64))
        start = time.perf_counter()
        result = pipe.generate(ov_genai.TokenizedInputs(tokens, ov.Tensor(np.ones_like(ids, np.int64))), config)
        total = time.perf_counter() - start
        ttft = result.perf_metrics.get_ttft().mean / 1000
        return ttft, total - ttft

    return run


def transformers_run(hf_model, new_tokens: int) -> Run:
    import torch

    def run(ids: list[list[int]]) -> tuple[float, float]:
        tensor = torch.tensor(ids)
        with torch.no_grad():
            start = time.perf_counter()
            hf_model.generate(tensor, max_new_tokens=1, min_new_tokens=1, do_sample=False)
            first = time.perf_counter()
            hf_model.generate(tensor, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
            whole = time.perf_counter() - first
        return first - start, whole - (first - start)  # the decode part of a full generate

    return run


def engines(name: str, context: int, new_tokens: int, only: set[str] | None) -> tuple[dict[str, Run], dict[str, str]]:
    """Every engine that can run ``name`` at ``context``; the others with one line each."""
    from proposals.kv_cache.fusion import fuse_to_gqa
    from proposals.text_pipeline.checkpoints import checkpoint_file
    from proposals.text_pipeline.export import exported_folder
    from proposals.text_pipeline.folder import ModelFolder

    folder = ModelFolder.read(exported_folder(name))
    gguf = checkpoint_file(name)
    capacity = context + new_tokens
    ort_args = {"threads": THREADS, "external_data": folder.external_data}
    makers: dict[str, Callable[[], Run]] = {
        "this pipeline, in place": lambda: _generator_run(OrtRunner(folder.decoder, **ort_args), new_tokens),
        "this pipeline, fused GQA": lambda: _generator_run(
            OrtRunner(fuse_to_gqa(folder.decoder), **ort_args), new_tokens
        ),
        "onnxruntime-genai": lambda: _ortgenai(folder, new_tokens),
        "mobius GQA": lambda: _greedy_run(MobiusGqaRunner(ort_session(build_mobius(gguf, "gqa"))), new_tokens),
        "mobius static, in place": lambda: _greedy_run(
            MobiusStaticRunner(ort_session(build_mobius(gguf, "static", max_seq_len=capacity)), inplace=True),
            new_tokens,
            capacity,
        ),
        "mobius 4-bit": lambda: _greedy_run(MobiusGqaRunner(ort_session(build_mobius(gguf, "4-bit"))), new_tokens),
        "openvino-genai (GGUF)": lambda: openvino_gguf_run(gguf, new_tokens),
        "llama.cpp (GGUF)": lambda: llama_cpp_run(gguf, new_tokens, context),
        "transformers": lambda: transformers_run(_hf_model(gguf), new_tokens),
    }
    runs, skipped = {}, {}
    for engine, make in makers.items():
        if only and engine not in only:
            continue
        try:
            runs[engine] = make()
        except ImportError as err:
            skipped[engine] = f"not installed ({err.name})"
        except Exception as err:  # an engine that cannot load this model is skipped, never fatal
            skipped[engine] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
    return runs, skipped


def _ortgenai(folder, new_tokens: int) -> Run:
    from proposals.text_pipeline.backends.onnxruntime_genai import OrtGenaiEngine

    engine = OrtGenaiEngine(folder)
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    def run(ids: list[list[int]]) -> tuple[float, float]:
        start = time.perf_counter()
        gen = engine.generator(config, None, len(ids))
        gen.append_input_tokens(ids)
        gen.generate_next_token()
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            gen.generate_next_token()
        return first - start, time.perf_counter() - first

    return run


def _hf_model(gguf: Path):
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(THREADS)
    return AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_cell(name: str, context: int, batch: int, new_tokens: int, rounds: int, only: set[str] | None) -> dict:
    from proposals.text_pipeline.build import spec_from_model
    from proposals.text_pipeline.export import exported_folder
    from proposals.text_pipeline.folder import ModelFolder

    spec = spec_from_model(ModelFolder.read(exported_folder(name)).decoder)
    if context + new_tokens > spec.max_positions:
        raise UsageError(
            f"a {context}-token prompt plus {new_tokens} new tokens exceeds {name}'s context of {spec.max_positions}"
        )
    runs, skipped = engines(name, context, new_tokens, only)
    for engine, why in skipped.items():
        print(f"  skip {engine}: {why}")
    ids = prompts(context, batch, spec.vocab_size)
    samples: dict[str, list[tuple[float, float]]] = {engine: [] for engine in runs}
    for engine, run in list(runs.items()):  # warm-up, and engines that cannot run this batch
        try:
            run(prompts(8, batch, spec.vocab_size))
        except UsageError as err:
            skipped[engine] = str(err)
            del runs[engine], samples[engine]
    names = list(runs)
    for round_ in range(rounds):
        for engine in names[round_ % len(names) :] + names[: round_ % len(names)]:
            time.sleep(0.3)
            samples[engine].append(runs[engine](ids))
    decode = {e: batch * (new_tokens - 1) / statistics.median(s[1] for s in v) for e, v in samples.items()}
    ttft = {e: statistics.median(s[0] for s in v) for e, v in samples.items()}
    return {
        "model": name,
        "context": context,
        "batch": batch,
        "new_tokens": new_tokens,
        "rounds": rounds,
        "decode_tokens_per_s": decode,
        "ttft_s": ttft,
        "skipped": skipped,
        "peak_rss_mb_after": peak_rss_mb(),
    }


def roofline(row: dict, weight_bytes: dict[str, float], cache_bytes_per_token: float, bandwidth_gbs: float) -> dict:
    """Share of the read-bandwidth limit each engine's decode step reaches."""
    held = row["context"] + row["new_tokens"] // 2  # the cache in the middle of the decode
    out = {}
    for engine, rate in row["decode_tokens_per_s"].items():
        precision = "4-bit" if engine in FOUR_BIT else "float32"
        step_bytes = weight_bytes[precision] + row["batch"] * held * cache_bytes_per_token
        out[engine] = (step_bytes / (bandwidth_gbs * 1e9)) / (row["batch"] / rate)
    return out


def main(
    quick: bool = False,
    cells: dict[str, list[tuple[int, int]]] | None = None,
    only: set[str] | None = None,
    new_tokens: int = NEW_TOKENS,
) -> None:
    from proposals.text_pipeline.cache_formats import cache_bytes_per_token
    from proposals.text_pipeline.export import exported_folder
    from proposals.text_pipeline.folder import ModelFolder

    plan = {"smollm2-135m-instruct": [(16, 1)]} if quick else (cells or FULL_CELLS)
    new_tokens, rounds = (4, 1) if quick else (new_tokens, 3)
    bandwidth = memory_bandwidth_gbs()
    rows = []
    for name, model_cells in plan.items():
        decoder = ModelFolder.read(exported_folder(name)).decoder
        params = sum(int(__import__("numpy").prod(t.dims)) for t in decoder.graph.initializer)
        weights = {"float32": 4.0 * params, "4-bit": 0.5625 * params}  # Q4_1/Q4_K: 4.5 bits a weight
        per_token = cache_bytes_per_token(decoder)
        for context, batch in model_cells:
            row = measure_cell(name, context, batch, new_tokens, rounds, only)
            row["roofline_share"] = roofline(row, weights, per_token, bandwidth)
            rows.append(row)
            print(name, context, batch, {e: round(r, 1) for e, r in row["decode_tokens_per_s"].items()}, flush=True)
    if not quick:
        setup = {
            "threads": THREADS,
            "bandwidth_gbs": bandwidth,
            "measured_cells": {n: c for n, c in plan.items()},
            "full_cells": FULL_CELLS,
        }
        write_json(TOPIC, "throughput_checkpoints", rows, setup)


def transformers_diagnosis(steps: int = 8) -> list[dict]:
    """Why transformers decodes SmolLM2 so slowly here: one decode step (64 tokens held) of the
    GGUF-loaded model and of a model built from the same config with random weights, at 1 and
    2 torch threads, interleaved. Equal times rule the GGUF load out; the thread count is the
    difference (torch's intra-op pool waits on a descheduled worker on an oversubscribed CPU)."""
    import os

    import torch
    from transformers import AutoModelForCausalLM

    from proposals.text_pipeline.checkpoints import checkpoint_file

    gguf_model = _hf_model(checkpoint_file(MODELS[0]))
    random_model = AutoModelForCausalLM.from_config(gguf_model.config, dtype=torch.float32).eval()
    ids = torch.tensor([[300 + i for i in range(64)]])

    def step_ms(model) -> float:
        with torch.no_grad():
            cache = model(ids, use_cache=True).past_key_values
            start = time.perf_counter()
            for _ in range(steps):
                cache = model(torch.tensor([[5]]), past_key_values=cache, use_cache=True).past_key_values
        return (time.perf_counter() - start) / steps * 1e3

    rows = []
    for threads in (2, 1, 2, 1):
        torch.set_num_threads(threads)
        rows.append(
            {
                "threads": threads,
                "gguf_ms": step_ms(gguf_model),
                "from_config_ms": step_ms(random_model),
                "load_average": os.getloadavg()[0],
            }
        )
        print(rows[-1], flush=True)
    return rows


def decode_op_profile(name: str = MODELS[0], context: int = 128, steps: int = 16) -> list[dict]:
    """Where this pipeline's decode step goes on a packaged checkpoint, standard and fused:
    onnxruntime's profiler, each op type's seconds per step and share (prefill and the first
    decode step left out). Written beside the throughput result when its goal is missed."""
    import json
    import tempfile

    import onnxruntime as ort

    from proposals.kv_cache.fusion import fuse_to_gqa
    from proposals.text_pipeline.export import exported_folder
    from proposals.text_pipeline.folder import ModelFolder

    folder = ModelFolder.read(exported_folder(name))
    rows = []
    for form, decoder in (("standard", folder.decoder), ("fused GQA", fuse_to_gqa(folder.decoder))):
        runner = OrtRunner(decoder, threads=THREADS, external_data=folder.external_data)
        with tempfile.TemporaryDirectory(prefix="tp-ckprof-") as scratch:
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            options.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", str(folder.external_data)
            )
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(scratch) / "decode")
            runner.session = ort.InferenceSession(
                decoder.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            gen = Generator(runner, GenerationConfig(max_new_tokens=steps + 2), batch_size=1)
            gen.append_input_tokens(prompts(context, 1, runner.vocab_size))
            for _ in range(steps + 1):
                gen.generate_next_token()
            events = json.loads(Path(runner.session.end_profiling()).read_text())
        runs = [e for e in events if e.get("name") == "model_run"]
        cutoff = runs[1]["ts"] + runs[1]["dur"]  # after the prefill and the first decode run
        kernels: dict[str, float] = {}
        for e in events:
            if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= cutoff:
                kernels[e["args"]["op_name"]] = kernels.get(e["args"]["op_name"], 0.0) + e["dur"] * 1e-6
        count = len([r for r in runs if r["ts"] >= cutoff])
        wall = sum(r["dur"] for r in runs if r["ts"] >= cutoff) * 1e-6 / count
        total = sum(kernels.values())
        rows += [
            {"form": form, "op": op, "s_per_step": t / count, "share": t / total, "run_s_per_step": wall}
            for op, t in sorted(kernels.items(), key=lambda kv: -kv[1])
        ]
    return rows


if __name__ == "__main__":  # pragma: no cover
    import sys

    if "--profile" in sys.argv:
        write_json(
            TOPIC,
            "throughput_checkpoints_ort_ops",
            decode_op_profile(),
            {"model": MODELS[0], "context": 128, "steps": 16},
        )
    elif "--transformers-diagnosis" in sys.argv:
        write_json(TOPIC, "transformers_diagnosis", transformers_diagnosis(), {"model": MODELS[0], "held": 64})
    elif "--cells" in sys.argv:  # e.g. --cells smollm2-135m-instruct:128x1,1024x1
        spec = sys.argv[sys.argv.index("--cells") + 1]
        name, cells = spec.split(":")
        tokens = int(sys.argv[sys.argv.index("--new-tokens") + 1]) if "--new-tokens" in sys.argv else NEW_TOKENS
        main(cells={name: [tuple(int(x) for x in c.split("x")) for c in cells.split(",")]}, new_tokens=tokens)
    else:
        main(quick="--quick" in sys.argv)
