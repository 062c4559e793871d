"""Throughput side by side (``make bench``): one seeded Llama-shaped model, every engine.

The model (hidden 256, 4 layers, GQA 4/2 heads of 64: a decode step is milliseconds of
compute, far above the loop's overhead, and a batch-8 prefill of 4096 tokens still fits the
bench's time on two cores) is drawn with the project's RNG
(``families.tiny_model``); ``build_decoder`` turns it into the opset-24 decoder. On it run:

- ``onnxruntime``: this pipeline's ``Generator`` over ``OrtRunner`` (cache in place);
- ``onnxruntime (copying)``: the same with a plain ``run()``, which copies the cache;
- ``onnxruntime-genai``: ORT GenAI 0.18 on the same decoder, through the backend's folder
  writer (``position_ids`` adapter, shared past/present buffers);
- ``openvino-genai``: ``LLMPipeline`` on the same weights, converted by the backend;
- ``transformers``: ``model.generate`` (SDPA attention, its dynamic cache).

Each cell (context x batch) runs every engine once per round, rounds interleaved so noise
hits all engines alike (each round starts at the next engine, each run after a pause); the
medians are reported. Time to first token is the prefill of
the whole batch plus the first token; tokens/s counts the batch's tokens after the first.
Every engine gets 2 threads and greedy decoding of a fixed number of new tokens (EOS off).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnx

from proposals.text_pipeline.build import build_decoder
from proposals.text_pipeline.config import GenerationConfig
from proposals.text_pipeline.families import tiny_model
from proposals.text_pipeline.folder import DEFAULT_CONFIG, ModelFolder, pipeline_manifest
from proposals.text_pipeline.generation import Generator
from proposals.text_pipeline.runners import OrtRunner
from proposals.text_pipeline.tokenizer import tokenizer_json

MODEL = {
    "hidden_size": 256,
    "intermediate_size": 768,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 4352,  # 4096 + the new tokens
}
THREADS = 2
PAUSE_S = 0.5  # idle time before each run (see measure)
ENGINES = ("onnxruntime", "onnxruntime (copying)", "onnxruntime-genai", "openvino-genai", "transformers")

# One generation: (prompts) -> (time to first token s, seconds for the tokens after it).
Run = Callable[[list[list[int]]], tuple[float, float]]


def prompts(context: int, batch: int) -> list[list[int]]:
    """``batch`` deterministic prompts of ``context`` tokens (ids 2..501, no EOS)."""
    return [[(13 * i + 7 * row + 5) % 500 + 2 for i in range(context)] for row in range(batch)]


def _timed_generator(make: Callable[[int], object], new_tokens: int) -> Run:
    """A WG ``Text2Text::Generator`` timed: append the prompts and pull the first token,
    then pull the rest."""

    def run(ids: list[list[int]]) -> tuple[float, float]:
        start = time.perf_counter()
        gen = make(len(ids))  # a fresh generator for this batch size
        gen.append_input_tokens(ids)
        gen.generate_next_token()
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            gen.generate_next_token()
        return first - start, time.perf_counter() - first

    return run


def ort_run(decoder: onnx.ModelProto, new_tokens: int, *, inplace: bool) -> Run:
    runner = OrtRunner(decoder, inplace=inplace, threads=THREADS)
    config = GenerationConfig(max_new_tokens=new_tokens)  # no EOS: every run is full length
    return _timed_generator(lambda batch: Generator(runner, config, batch_size=batch), new_tokens)


def ortgenai_run(folder: ModelFolder, new_tokens: int) -> Run:
    from proposals.text_pipeline.backends.onnxruntime_genai import OrtGenaiEngine

    engine = OrtGenaiEngine(folder)
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens)
    return _timed_generator(lambda batch: engine.generator(config, None, batch), new_tokens)


def openvino_run(folder: ModelFolder, hf_model, new_tokens: int) -> Run:
    """One ``generate`` call (``LLMPipeline`` for batch 1, ``ContinuousBatchingPipeline``
    for a batch): OpenVINO GenAI's own perf metrics give the time to first token, the wall
    clock the rest."""
    from proposals.text_pipeline.backends.openvino_genai import PROPERTIES, OpenVinoGenaiEngine

    engine = OpenVinoGenaiEngine(folder, {**PROPERTIES, "INFERENCE_NUM_THREADS": THREADS}, hf_model)
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens)

    def run(ids: list[list[int]]) -> tuple[float, float]:
        start = time.perf_counter()
        _, ttft = engine.run(ids, [engine.options(config, new_tokens)] * len(ids))
        return ttft, time.perf_counter() - start - ttft

    return run


def transformers_run(hf_model, new_tokens: int) -> Run:
    """``model.generate``, timed by a streamer: ``put`` gets the prompt, then each token."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    def run(ids: list[list[int]]) -> tuple[float, float]:
        clock = Clock()
        start = time.perf_counter()
        with torch.no_grad():
            hf_model.generate(
                torch.tensor(ids),
                attention_mask=torch.ones(len(ids), len(ids[0]), dtype=torch.int64),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                streamer=clock,
            )
        end = time.perf_counter()
        first = clock.times[1]  # times[0]: the prompt
        return first - start, end - first

    return run


def bench_folder(hf_model, decoder: onnx.ModelProto, target: Path) -> ModelFolder:
    """A pipeline model folder for the bench model (the ORT GenAI writer reads one)."""
    (target / "model.onnx").write_bytes(decoder.SerializeToString())
    (target / "tokenizer.json").write_bytes(tokenizer_json())
    manifest = pipeline_manifest("llama", DEFAULT_CONFIG, {})
    return ModelFolder(target, decoder, tokenizer_json(), DEFAULT_CONFIG, manifest)


def measure(cells: list[tuple[int, int]], new_tokens: int, rounds: dict[tuple[int, int], int]) -> list[dict]:
    """Every engine on every (context, batch) cell, interleaved per round; medians."""
    import torch

    torch.set_num_threads(THREADS)
    hf_model = tiny_model("llama", **MODEL)
    decoder = build_decoder(hf_model)
    hf_model.set_attn_implementation("sdpa")
    rows = []
    with tempfile.TemporaryDirectory(prefix="tp-throughput-") as scratch:
        folder = bench_folder(hf_model, decoder, Path(scratch))
        for context, batch in cells:
            n = new_tokens
            runs: dict[str, Run] = {
                "onnxruntime": ort_run(decoder, n, inplace=True),
                "onnxruntime (copying)": ort_run(decoder, n, inplace=False),
                "onnxruntime-genai": ortgenai_run(folder, n),
                "openvino-genai": openvino_run(folder, hf_model, n),
                "transformers": transformers_run(hf_model, n),
            }
            if batch > 1:  # the copying baseline answers the in-place question at batch 1
                del runs["onnxruntime (copying)"]
            for run in runs.values():  # warm-up: first runs allocate and plan
                run(prompts(8, batch))
            ids = prompts(context, batch)
            samples: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
            names = list(runs)
            for round_ in range(rounds[context, batch]):
                # Each round starts at another engine, and each run after a pause: torch's and
                # onnxruntime's worker threads spin for a while after their work, which would
                # slow whichever engine always ran next.
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    time.sleep(PAUSE_S)
                    samples[name].append(runs[name](ids))
            rows.append(_row(context, batch, n, samples))
            print(_summary(rows[-1]), flush=True)
    return rows


def _row(context: int, batch: int, new_tokens: int, samples: dict[str, list[tuple[float, float]]]) -> dict:
    ttft = {name: statistics.median(s[0] for s in runs) for name, runs in samples.items()}
    decode = {name: statistics.median(s[1] for s in runs) for name, runs in samples.items()}
    tokens_per_s = {name: batch * (new_tokens - 1) / t for name, t in decode.items()}
    ours = tokens_per_s["onnxruntime"]
    return {
        "context": context,
        "batch": batch,
        "new_tokens": new_tokens,
        "rounds": len(next(iter(samples.values()))),
        "ttft_s": ttft,
        "decode_tokens_per_s": tokens_per_s,
        "tokens_per_s_over_onnxruntime": {name: t / ours for name, t in tokens_per_s.items()},
        "ttft_over_onnxruntime": {name: t / ttft["onnxruntime"] for name, t in ttft.items()},
    }


def _summary(row: dict) -> str:
    tok = row["decode_tokens_per_s"]
    parts = ", ".join(f"{name} {tok[name]:.0f}" for name in ENGINES if name in tok)
    return f"context {row['context']} batch {row['batch']}: decode tok/s {parts}"


def profile_decode(context: int, new_tokens: int, batch: int = 1) -> list[dict]:
    """cProfile of this pipeline's decode loop (``batch`` prompts of ``context`` tokens):
    the functions with the most own time and their share of the loop's time, so the page
    can say where a decode step goes (onnxruntime's ``run_with_iobinding`` is the graph)."""
    import cProfile
    import pstats

    decoder = build_decoder(tiny_model("llama", **MODEL))
    config = GenerationConfig(max_new_tokens=new_tokens + 1)
    gen = Generator(OrtRunner(decoder, threads=THREADS), config, batch_size=batch)
    gen.append_input_tokens(prompts(context, batch))
    gen.generate_next_token()  # the prefill's token; the first decode step below plans
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(new_tokens):
        gen.generate_next_token()
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = sum(entry[2] for entry in stats.values())  # own time of every function
    rows = [
        {"function": _label(key), "own_s": entry[2], "share": entry[2] / total, "calls": entry[1]}
        for key, entry in stats.items()
    ]
    return sorted(rows, key=lambda r: -r["own_s"])[:10]


def ort_op_profile(context: int, new_tokens: int, batch: int = 1, model: dict | None = None) -> list[dict]:
    """onnxruntime's own profiler on the same decode loop: each op type's share of the
    kernel time of the decode runs (the prefill runs, one per sequence, and the first decode
    run left out)."""
    import json

    import onnxruntime as ort

    decoder = build_decoder(tiny_model("llama", **(MODEL if model is None else model)))
    runner = OrtRunner(decoder, threads=THREADS)
    with tempfile.TemporaryDirectory(prefix="tp-ortprof-") as scratch:
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "decode")
        runner.session = ort.InferenceSession(decoder.SerializeToString(), options, providers=["CPUExecutionProvider"])
        gen = Generator(runner, GenerationConfig(max_new_tokens=new_tokens + 2), batch_size=batch)
        gen.append_input_tokens(prompts(context, batch))
        for _ in range(new_tokens + 1):
            gen.generate_next_token()
        events = json.loads(Path(runner.session.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    first_decode = runs[batch]  # the prefill is one run per sequence
    cutoff = first_decode["ts"] + first_decode["dur"]
    kernels: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= cutoff:
            op = e["args"]["op_name"]
            kernels[op] = kernels.get(op, 0.0) + e["dur"] * 1e-6
    steps = len([r for r in runs if r["ts"] >= cutoff])
    total = sum(kernels.values())
    rows = [{"op": op, "s_per_step": t / steps, "share": t / total} for op, t in kernels.items()]
    return sorted(rows, key=lambda r: -r["share"])


def _label(key: tuple[str, int, str]) -> str:
    path, _, name = key
    if path == "~":  # a builtin or a C method such as onnxruntime's run_with_iobinding
        return name.strip("<>").replace("method ", "")
    return f"{Path(path).stem}.{name}"


CELLS = [(512, 1), (512, 8), (4096, 1), (4096, 8)]
NEW_TOKENS = 128  # per run: enough steps that one preempted step does not decide the cell
ROUNDS = {(512, 1): 5, (512, 8): 5, (4096, 1): 3, (4096, 8): 1}  # a 4096 x 8 prefill is minutes


def main(quick: bool = False) -> None:
    """All engines side by side, then the decode loop's profile; a quick run only shows that
    the bench works (tiny contexts) and writes nothing."""
    from generator.bench import write_json

    if quick:
        measure([(32, 1), (32, 2)], 4, {(32, 1): 1, (32, 2): 1})
        profile_decode(32, 4)
        ort_op_profile(32, 4)
        return
    rows = measure(CELLS, NEW_TOKENS, ROUNDS)
    setup = {
        "model": MODEL,
        "threads": THREADS,
        "engines": list(ENGINES),
        "new_tokens": NEW_TOKENS,
        "rounds": {f"{c}x{b}": n for (c, b), n in ROUNDS.items()},
        "versions": _versions(),
    }
    write_json(TOPIC, "throughput", rows, setup)
    write_profiles()


PROFILED = {"context": 4096, "batch": 8, "decode_steps": 16}  # the cell furthest from its goal


def write_profiles() -> None:
    """The decode loop's cProfile and onnxruntime's op profile, on the profiled cell."""
    from generator.bench import write_json

    context, batch, steps = PROFILED["context"], PROFILED["batch"], PROFILED["decode_steps"]
    setup = {"model": MODEL, **PROFILED}
    write_json(TOPIC, "throughput_profile", profile_decode(context, steps, batch), setup)
    write_json(TOPIC, "throughput_ort_ops", ort_op_profile(context, steps, batch), setup)


TOPIC = "text_pipeline"


def _versions() -> dict[str, str]:
    from importlib.metadata import version

    names = ("onnxruntime", "onnxruntime-genai", "openvino", "openvino-genai", "torch", "transformers")
    return {name: version(name) for name in names}
