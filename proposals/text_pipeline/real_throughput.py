"""Throughput side by side on the packaged checkpoints (``make bench``; ``--quick`` for a
seconds-long smoke run that writes nothing).

Engines, each on the same GGUF checkpoint (SmolLM2-135M-Instruct, Gemma 3 270M):

- float32 weights (the GGUF dequantized): this pipeline with the cache in place
  (``OrtRunner``), on the paged decoder (``serving.PagedRunner``, the ``onnxruntime-paged``
  backend; linear caches only), the same after the GQA fusion (:mod:`proposals.kv_cache.fusion`),
  onnxruntime-genai on the exported folder, mobius-onnx's GQA and static-cache graphs,
  transformers ``generate``;
- 4-bit weights: mobius-onnx's MatMulNBits graph, openvino-genai reading the GGUF,
  llama.cpp through llama-cpp-python (an optional bench extra).

Every cell (model x prompt length x batch) runs each engine once per round, rounds
interleaved, at least 3, medians reported: time to first token, decode tokens/s (the batch's
tokens after the first), and peak RSS. Each engine lives in its own child process, so its peak
RSS is its own (the process's high-water mark over the cell's runs), and each round's prompt is
fresh, so no engine reuses a prefix cached in an earlier round. The roofline share is the time a
decode step must take at the machine's measured read bandwidth (each engine's weights at their
precision, plus the cache held; the paged engine's whole blocks) over the measured step. An
engine that is not installed or cannot run a model is skipped with one line; a prompt longer
than a model's context is refused in one line.

The full matrix (prompts of 128, 1,024, 4,096 and, for Gemma, 8,192 tokens; batch 1 and 4;
128 new tokens) is :data:`FULL_CELLS`; ``--cells`` picks a subset (what a 2-core machine can
run in its time), and the result records which cells were measured.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import onnx

from generator.bench import memory_bandwidth_gbs, write_json
from generator.errors import UsageError
from proposals.text_pipeline.config import GenerationConfig
from proposals.text_pipeline.generation import Generator
from proposals.text_pipeline.mobius_forms import MobiusGqaRunner, MobiusStaticRunner, build_mobius, ort_session
from proposals.text_pipeline.runners import OrtRunner
from proposals.text_pipeline.serving import DEFAULT_BLOCK_SIZE, PagedCache, PagedRunner
from proposals.text_pipeline.throughput import Run, transformers_run  # one generation, timed

TOPIC = "text_pipeline"
THREADS = 2
NEW_TOKENS = 128
MODELS = ("smollm2-135m-instruct", "gemma3-270m")
FULL_CELLS = {
    "smollm2-135m-instruct": [(c, b) for c in (128, 1024, 4096) for b in (1, 4)],
    "gemma3-270m": [(c, b) for c in (128, 1024, 4096, 8192) for b in (1, 4)],
}
PAGED = "this pipeline, onnxruntime-paged"
# onnxruntime's own default lets idle pool threads spin between ops; every session here turns
# that off (generator.ort.session) except onnxruntime-genai's, so this pipeline runs both ways.
SPINNING = "this pipeline, in place, pool spinning"
PAGED_BLOCK_SIZE = DEFAULT_BLOCK_SIZE
FLOAT32 = (
    "this pipeline, in place",
    SPINNING,
    PAGED,
    "this pipeline, fused GQA",
    "onnxruntime-genai",
    "mobius GQA",
    "mobius static, in place",
    "transformers",
)
LLAMA_CPP_DEFAULT_WAIT = "llama.cpp (GGUF), OpenMP default wait"
OMP_WAIT_POLICY = "PASSIVE"  # every engine process's, but LLAMA_CPP_DEFAULT_WAIT's
FOUR_BIT = ("mobius 4-bit", "openvino-genai (GGUF)", "llama.cpp (GGUF)", LLAMA_CPP_DEFAULT_WAIT)


def prompts(context: int, batch: int, vocab: int, salt: int = 0) -> list[list[int]]:
    """``batch`` deterministic prompts of ``context`` ordinary token ids; another ``salt`` changes
    every first token, so no engine can reuse a cached prefix from an earlier round."""
    return [
        [(13 * i + 7 * row + 101 * salt + 5) % min(vocab, 20000) + 300 for i in range(context)] for row in range(batch)
    ]


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


def paged_pool_blocks(context: int, new_tokens: int, batch: int) -> int:
    """Blocks the paged engine's pool gets for one cell: every sequence at its longest."""
    # Not the backend's default (eight sequences at the model's full context: ~3 GB for SmolLM2's
    # 8,192 positions). The in-place engine's cache is sized for the cell (batch x (prompt + new
    # tokens)), so a pool sized the same keeps the peak RSS comparable; the decode step reads only
    # the blocks a sequence holds either way, so the pool's size does not change the rate.
    return batch * -(-(context + new_tokens) // PAGED_BLOCK_SIZE)


def paged_runner(
    decoder: onnx.ModelProto, context: int, new_tokens: int, batch: int, external_data: Path | None = None
) -> PagedRunner:
    """This pipeline's paged decoder (the ``onnxruntime-paged`` backend's runner) with its pool
    sized for one cell; refuses a circular cache (UsageError) as the backend does."""
    blocks = paged_pool_blocks(context, new_tokens, batch)
    cache = PagedCache(decoder, blocks, PAGED_BLOCK_SIZE, threads=THREADS, external_data=external_data)
    return PagedRunner(cache)


def cache_tokens_read(engine: str, held: int) -> int:
    """Cache slots one sequence's decode step reads while holding ``held`` tokens: the paged
    graph gathers every block the sequence holds, its last one partly filled."""
    return -(-held // PAGED_BLOCK_SIZE) * PAGED_BLOCK_SIZE if engine == PAGED else held


def llama_cpp_run(gguf: Path, new_tokens: int, context: int) -> Run:
    import llama_cpp
    import numpy as np

    llm = llama_cpp.Llama(str(gguf), n_threads=THREADS, n_ctx=context + new_tokens, n_batch=512, verbose=False)

    def next_token() -> int:
        # Llama.eval keeps no logits unless logits_all; read the last position's from the context
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(llm.n_vocab(),))
        return int(logits.argmax())

    def run(ids: list[list[int]]) -> tuple[float, float]:
        if len(ids) != 1:
            raise UsageError("llama.cpp through llama-cpp-python runs one sequence here")
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids[0])
        token = next_token()
        first = time.perf_counter()
        for _ in range(new_tokens - 1):
            llm.eval([token])
            token = next_token()
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


def _onnx_weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the weights a decode step reads, at their stored precision: every initializer
    but rotary tables and tables only a Gather reads (a step gathers one row of each; a table
    tied to the output projection is read whole and counted)."""
    readers: dict[str, set[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, set()).add(node.op_type)
    return sum(
        math.prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        for t in model.graph.initializer
        if not _rotary_table(t.name) and readers.get(t.name, {"?"}) != {"Gather"}
    )


def _ir_weight_bytes(model) -> int:
    """:func:`_onnx_weight_bytes` of an onnx-ir model (mobius-onnx builds those)."""
    return sum(
        v.const_value.nbytes
        for v in model.graph.initializers.values()
        if not _rotary_table(v.name) and {use.node.op_type for use in v.uses()} != {"Gather"}
    )


def _rotary_table(name: str) -> bool:
    return "cos_cache" in name or "sin_cache" in name


def weight_bytes(name: str, engine: str) -> int:
    """What ``engine_run`` reports for ``engine`` on ``name``, without a session (recounts a
    committed result when the counting rule changes)."""
    from proposals.text_pipeline.checkpoints import checkpoint_file
    from proposals.text_pipeline.export import exported_folder
    from proposals.text_pipeline.folder import ModelFolder

    gguf = checkpoint_file(name)
    forms = {"mobius GQA": "gqa", "mobius static, in place": "static", "mobius 4-bit": "4-bit"}
    if engine in forms:
        return _ir_weight_bytes(
            build_mobius(gguf, forms[engine], **({"max_seq_len": 256} if "static" in engine else {}))
        )
    if engine in ("openvino-genai (GGUF)", "llama.cpp (GGUF)", LLAMA_CPP_DEFAULT_WAIT):
        return gguf.stat().st_size
    if engine == "transformers":
        return sum(p.numel() * p.element_size() for p in _hf_model(gguf).parameters())
    return _onnx_weight_bytes(ModelFolder.read(exported_folder(name)).decoder)


def recount_weights(engines: tuple[str, ...] = ("mobius GQA", "mobius static, in place", "mobius 4-bit")) -> None:
    """Recount ``engines``' weight bytes in the committed result, and every roofline share."""
    data = _earlier_result()
    counted: dict[tuple[str, str], int] = {}
    for row in data["rows"]:
        for engine in (e for e in row["weight_bytes"] if e in engines):
            key = (row["model"], engine)
            if key not in counted:
                counted[key] = weight_bytes(*key)
                print(key, row["weight_bytes"][engine], "->", counted[key], flush=True)
            row["weight_bytes"][engine] = counted[key]
    setup = data["setup"]
    _write(data["rows"], setup["bandwidth_samples_gbs"], setup["bench_seconds"])


# Engines whose prefill returns logits for every position of the whole batch's prompts at once
# (this pipeline prefills one sequence at a time and, past a window, keeps the last position only;
# transformers' generate and llama.cpp keep the last position).
ALL_POSITION_LOGITS = ("onnxruntime-genai", "mobius GQA", "mobius static, in place", "mobius 4-bit")


def engine_run(name: str, engine: str, context: int, new_tokens: int, batch: int = 1) -> tuple[Run, int]:
    """:func:`build_engine`, refusing in one line a prompt batch whose every-position logits
    alone would take more than half the machine's memory (it would swap, or be killed)."""
    run, weights = build_engine(name, engine, context, new_tokens, batch)
    if engine not in ALL_POSITION_LOGITS:
        return run, weights
    from proposals.text_pipeline.build import spec_from_model
    from proposals.text_pipeline.export import exported_folder
    from proposals.text_pipeline.folder import ModelFolder

    vocab = spec_from_model(ModelFolder.read(exported_folder(name)).decoder).vocab_size
    return logits_guard(run, vocab, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2), weights


def logits_guard(run: Run, vocab: int, budget: float) -> Run:
    """``run``, refusing in one line a prompt batch whose float32 logits for every position
    would take more than ``budget`` bytes."""

    def guarded(ids: list[list[int]]) -> tuple[float, float]:
        need = len(ids) * max(map(len, ids)) * vocab * 4
        if need > budget:
            raise UsageError(
                f"its prefill returns float32 logits for every prompt position: {need / 2**30:.1f} GiB for "
                f"{len(ids)} x {max(map(len, ids))} tokens, over half this machine's {2 * budget / 2**30:.0f} GiB"
            )
        return run(ids)

    return guarded


def build_engine(name: str, engine: str, context: int, new_tokens: int, batch: int = 1) -> tuple[Run, int]:
    """One engine on ``name`` for ``context``-token prompts (``batch`` of them, for an engine
    sized for the batch), and the bytes of weights it holds at their precision (what a decode
    step reads). Raises ImportError when the engine is not installed."""
    from proposals.kv_cache.fusion import fuse_to_gqa
    from proposals.text_pipeline.checkpoints import checkpoint_file
    from proposals.text_pipeline.export import exported_folder
    from proposals.text_pipeline.folder import ModelFolder

    folder = ModelFolder.read(exported_folder(name))
    gguf = checkpoint_file(name)
    capacity = context + new_tokens
    ort_args = {"threads": THREADS, "external_data": folder.external_data}
    exported = _onnx_weight_bytes(folder.decoder)

    def mobius(form: str, runner, **kwargs) -> tuple[Run, int]:
        model = build_mobius(gguf, form, **kwargs)
        weights = _ir_weight_bytes(model)
        return _greedy_run(runner(ort_session(model)), new_tokens, kwargs.get("max_seq_len")), weights

    if engine == "this pipeline, in place":
        return _generator_run(OrtRunner(folder.decoder, **ort_args), new_tokens), exported
    if engine == SPINNING:
        return _generator_run(OrtRunner(folder.decoder, **ort_args, spinning=True), new_tokens), exported
    if engine == PAGED:  # the same initializers after the rewrite: the same weight bytes
        runner = paged_runner(folder.decoder, context, new_tokens, batch, folder.external_data)
        return _generator_run(runner, new_tokens), exported
    if engine == "this pipeline, fused GQA":
        return _generator_run(OrtRunner(fuse_to_gqa(folder.decoder), **ort_args), new_tokens), exported
    if engine == "onnxruntime-genai":
        return _ortgenai(folder, new_tokens), exported
    if engine == "mobius GQA":
        return mobius("gqa", MobiusGqaRunner)
    if engine == "mobius static, in place":
        return mobius("static", lambda s: MobiusStaticRunner(s, inplace=True), max_seq_len=capacity)
    if engine == "mobius 4-bit":
        return mobius("4-bit", MobiusGqaRunner)
    if engine == "openvino-genai (GGUF)":
        return openvino_gguf_run(gguf, new_tokens), gguf.stat().st_size
    if engine in ("llama.cpp (GGUF)", LLAMA_CPP_DEFAULT_WAIT):
        return llama_cpp_run(gguf, new_tokens, context), gguf.stat().st_size
    if engine == "transformers":
        model = _hf_model(gguf)
        return transformers_run(model, new_tokens), sum(p.numel() * p.element_size() for p in model.parameters())
    raise UsageError(f"unknown engine {engine!r}; valid: {', '.join(FLOAT32 + FOUR_BIT)}")


# Engines whose graph or context is sized for the prompt: rebuilt when the prompt length changes;
# and those sized for the batch too (the paged engine's block pool): rebuilt when it changes.
SIZED_FOR_CONTEXT = ("mobius static, in place", "llama.cpp (GGUF)", LLAMA_CPP_DEFAULT_WAIT, PAGED)
SIZED_FOR_BATCH = (PAGED,)


def set_wait_policy(policy: str) -> None:
    """In a spawned bench child, before OpenMP loads: its ``OMP_WAIT_POLICY`` ("default":
    unset, OpenMP's spin-then-sleep). The parent's environment is never changed."""

    if policy == "default":
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = policy


def _serve_engine(conn, name: str, engine: str, context: int, new_tokens: int, batch: int, policy: str) -> None:
    """A child process holding one engine, so its memory is its own: builds it, answers each
    prompt batch it is sent with (seconds to the first token, seconds after it), resets its
    peak RSS on "reset", and on None answers its peak RSS and exits."""
    set_wait_policy(policy)
    try:
        run, weights = engine_run(name, engine, context, new_tokens, batch)
    except ImportError as err:
        conn.send(("skip", f"not installed ({err.name})"))
        return
    except Exception as err:  # an engine that cannot load this model is skipped, never fatal
        conn.send(("skip", f"{type(err).__name__}: {str(err).splitlines()[0][:160] if str(err) else ''}"))
        return
    conn.send(("ready", {"weight_bytes": weights, "load_peak_rss_mb": _peak_rss_mb()}))
    while (message := conn.recv()) is not None:
        if message == "reset":
            Path("/proc/self/clear_refs").write_text("5")  # peak RSS from here on (Linux)
            conn.send(("ok", None))
            continue
        if message == "peak":
            conn.send(("ok", _peak_rss_mb()))
            continue
        try:
            conn.send(("ok", run(message)))
        except UsageError as err:
            conn.send(("skip", str(err)))
    conn.send(("ok", _peak_rss_mb()))


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class EngineProcess:
    """The parent's handle on one engine's child process."""

    def __init__(self, name: str, engine: str, context: int, new_tokens: int, batch: int = 1) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding thread pools
        self.conn, child = ctx.Pipe()
        # llama.cpp as its users get it: OpenMP's default wait (spin, then sleep) read at load
        policy = "default" if engine == LLAMA_CPP_DEFAULT_WAIT else os.environ.get("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
        args = (child, name, engine, context, new_tokens, batch, policy)
        self.process = ctx.Process(target=_serve_engine, args=args, daemon=True)
        self.process.start()
        child.close()
        self.context, self.batch = context, batch
        self.status, self.info = self._answer()

    def _answer(self) -> tuple[str, object]:
        try:
            return self.conn.recv()
        except EOFError:
            return self._ended()

    def ask(self, message) -> tuple[str, object]:
        try:
            self.conn.send(message)
        except BrokenPipeError:  # it died while another engine ran (the OOM killer picks the largest)
            return self._ended()
        return self._answer()

    def _ended(self) -> tuple[str, object]:
        self.process.join()
        code = self.process.exitcode
        killed = ", killed (SIGKILL: the kernel's out-of-memory killer does that)" if code == -9 else ""
        return "skip", f"its process ended (exit status {code}{killed})"

    def close(self) -> float | None:
        """Ends the child; its peak RSS since the last reset."""
        peak = self.ask(None)[1] if self.status == "ready" and self.process.is_alive() else None
        self.process.join(timeout=30)
        if self.process.is_alive():
            self.process.kill()
        return peak if isinstance(peak, float) else None


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


def _one_line(text: object) -> str:
    return str(text).splitlines()[0][:200] if str(text) else "no message"


def measure_model(
    name: str, cells: list[tuple[int, int]], new_tokens: int, rounds: int, only: set[str] | None
) -> Iterator[dict]:
    """Every cell of one model, each row as soon as it is measured; each engine in its own
    process, kept across cells (rebuilt when the prompt length changes for those sized for it)."""
    from proposals.text_pipeline.build import spec_from_model
    from proposals.text_pipeline.export import exported_folder
    from proposals.text_pipeline.folder import ModelFolder

    spec = spec_from_model(ModelFolder.read(exported_folder(name)).decoder)
    for context, _ in cells:
        if context + new_tokens > spec.max_positions:
            raise UsageError(
                f"a {context}-token prompt plus {new_tokens} new tokens exceeds {name}'s context "
                f"of {spec.max_positions}"
            )
    wanted = [e for e in FLOAT32 + FOUR_BIT if not only or e in only]
    pool: dict[str, EngineProcess] = {}
    unavailable: dict[str, str] = {}
    try:
        for context, batch in cells:
            for engine in wanted:
                held = pool.get(engine)
                if held is not None and (
                    (engine in SIZED_FOR_CONTEXT and held.context != context)
                    or (engine in SIZED_FOR_BATCH and held.batch != batch)
                ):
                    held.close()
                    del pool[engine]
                if engine not in pool and engine not in unavailable:
                    started = EngineProcess(name, engine, context, new_tokens, batch)
                    if started.status == "ready":
                        pool[engine] = started
                    else:
                        unavailable[engine] = _one_line(started.info)
                        started.close()
                        print(f"  skip {engine}: {unavailable[engine]}", flush=True)
            started = time.time()
            row = measure_cell(name, pool, context, batch, new_tokens, rounds, spec.vocab_size, unavailable)
            row["cell_seconds"] = time.time() - started  # engine builds left out
            print(name, context, batch, {e: round(v, 1) for e, v in row["decode_tokens_per_s"].items()}, flush=True)
            yield row
    finally:
        for held in pool.values():
            held.close()


def measure_cell(
    name: str,
    pool: dict[str, EngineProcess],
    context: int,
    batch: int,
    new_tokens: int,
    rounds: int,
    vocab: int,
    unavailable: dict[str, str],
) -> dict:
    """One cell: a warm-up run each, then ``rounds`` interleaved rounds; medians, and each
    engine's peak RSS over this cell's runs."""

    skipped = dict(unavailable)
    names = []
    for engine, held in pool.items():
        status, info = held.ask(prompts(8, batch, vocab))  # warm-up; engines that cannot run this batch
        if status == "ok":
            held.ask("reset")
            names.append(engine)
        else:
            skipped[engine] = _one_line(info)
            print(f"  skip {engine} at batch {batch}: {skipped[engine]}", flush=True)
    samples: dict[str, list[tuple[float, float]]] = {engine: [] for engine in names}
    load = [os.getloadavg()[0]]
    for round_ in range(rounds if names else 0):  # none left when every engine was skipped
        for engine in names[round_ % len(names) :] + names[: round_ % len(names)]:
            if engine in skipped:
                continue
            time.sleep(0.3)
            status, info = pool[engine].ask(prompts(context, batch, vocab, salt=1 + round_))
            if status == "ok":
                samples[engine].append(info)
            else:
                skipped[engine] = _one_line(info)
        load.append(os.getloadavg()[0])
    measured = [e for e in names if e not in skipped]
    peak = {e: pool[e].ask("peak")[1] for e in measured}
    return {
        "model": name,
        "context": context,
        "batch": batch,
        "new_tokens": new_tokens,
        "rounds": rounds,
        "decode_tokens_per_s": {
            e: batch * (new_tokens - 1) / statistics.median(s[1] for s in samples[e]) for e in measured
        },
        "ttft_s": {e: statistics.median(s[0] for s in samples[e]) for e in measured},
        "peak_rss_mb": peak,
        "weight_bytes": {e: pool[e].info["weight_bytes"] for e in measured},
        "load_peak_rss_mb": {e: pool[e].info["load_peak_rss_mb"] for e in measured},
        "skipped": skipped,
        "load_average": load,
    }


def cache_bytes_held(decoder, held: int) -> float:
    """Bytes of cache one sequence holding ``held`` tokens has: a sliding-window layer's
    circular buffer holds at most its window."""
    from proposals.text_pipeline.cache_formats import cache_buffers

    return sum(buffer.bytes_per_token() * _held_in(buffer.dims[2], held) for buffer in cache_buffers(decoder))


def _held_in(length: int | str, held: int) -> int:
    """Tokens a buffer of ``length`` slots holds (a symbolic length grows with the sequence)."""
    return min(held, length) if isinstance(length, int) else held


def roofline(row: dict, cache_bytes: Callable[[str, int], float], bandwidth_gbs: float) -> dict:
    """Share of the read-bandwidth limit each engine's decode step reaches: the step's bytes
    (its weights at their precision, plus every sequence's cache: ``cache_bytes(engine, held)``)
    at the measured bandwidth, over the measured step."""
    held = row["context"] + row["new_tokens"] // 2  # the cache in the middle of the decode
    out = {}
    for engine, rate in row["decode_tokens_per_s"].items():
        step_bytes = row["weight_bytes"][engine] + row["batch"] * cache_bytes(engine, held)
        out[engine] = (step_bytes / (bandwidth_gbs * 1e9)) / (row["batch"] / rate)
    return out


def main(
    quick: bool = False,
    cells: dict[str, list[tuple[int, int]]] | None = None,
    only: set[str] | None = None,
    new_tokens: int = NEW_TOKENS,
    rounds: int = 3,
    append: bool = False,
) -> None:
    """Measure ``cells`` (the full matrix by default) and write the result after every cell,
    so an interrupted run keeps what it measured. ``append`` keeps the committed result's
    other cells (measured by an earlier run of this code), each roofline share recomputed at
    the best bandwidth any run measured; with ``only`` (a group of engines, when every engine
    of a model at once would not fit in memory) a measured cell is merged into the committed
    one, the group recorded in its ``engine_groups``."""
    # OpenMP's default spin-wait stalls llama.cpp's and torch's workers whenever the 2 cores
    # are shared; passive waiting is what a 2-core machine needs (EngineProcess gives it to
    # every engine's child but LLAMA_CPP_DEFAULT_WAIT's).
    plan = {"smollm2-135m-instruct": [(16, 1)]} if quick else (cells or FULL_CELLS)
    new_tokens, rounds = (4, 1) if quick else (new_tokens, rounds)
    earlier = _earlier_result() if append and not quick else {"rows": [], "setup": {}}
    bandwidth = earlier["setup"].get("bandwidth_samples_gbs", []) + [memory_bandwidth_gbs()]
    rows = earlier["rows"]
    seconds = earlier["setup"].get("bench_seconds", 0.0)
    for name, model_cells in plan.items():
        groups = [only] if only is not None else MEMORY_GROUPS.get(name, [None])
        for number, group in enumerate(groups):
            started = time.time()
            for row in measure_model(name, model_cells, new_tokens, rounds, group):
                held = row["context"] + row["new_tokens"] // 2
                row["cache_bytes_per_sequence"] = _cache_bytes_held(name, held)
                # engines whose step reads more than the tokens held (the paged one: whole blocks)
                row["cache_bytes_read"] = {
                    e: _cache_bytes_held(name, cache_tokens_read(e, held))
                    for e in row["decode_tokens_per_s"]
                    if cache_tokens_read(e, held) != held
                }
                row["engine_groups"] = [sorted(row["decode_tokens_per_s"])]
                rows = _place(rows, row, merge=only is not None or number > 0)
                if not quick:
                    _write(rows, bandwidth, seconds + time.time() - started)
            seconds += time.time() - started
    bandwidth.append(memory_bandwidth_gbs())
    if not quick:
        _write(rows, bandwidth, seconds)


# Gemma 3's engine processes together need more than a 24 GiB machine (mobius's graphs hold
# several GiB each): its engines run in two groups, each interleaved within itself, merged per cell.
# The paged engine refuses Gemma's ring buffers at build: listed, so its skip line is recorded.
MEMORY_GROUPS = {
    "gemma3-270m": [
        {"this pipeline, in place", SPINNING, PAGED, "this pipeline, fused GQA", "onnxruntime-genai", "mobius GQA"},
        {"mobius static, in place", "transformers", "mobius 4-bit", "openvino-genai (GGUF)"}
        | {"llama.cpp (GGUF)", LLAMA_CPP_DEFAULT_WAIT},
    ]
}

PER_ENGINE = ("decode_tokens_per_s", "ttft_s", "peak_rss_mb", "weight_bytes", "load_peak_rss_mb")


def _place(rows: list[dict], row: dict, *, merge: bool) -> list[dict]:
    """``rows`` with ``row`` in its cell: replacing the cell's earlier row, or merged into it
    (another group of engines, measured in its own interleaved rounds)."""
    key = (row["model"], row["context"], row["batch"])
    old = next((r for r in rows if (r["model"], r["context"], r["batch"]) == key), None)
    others = [r for r in rows if r is not old]
    if old is None or not merge:
        return [*others, row]
    merged = dict(old)
    for field in PER_ENGINE:
        merged[field] = {**old[field], **row[field]}
    measured = set(merged["decode_tokens_per_s"])
    skipped = {**old["skipped"], **row["skipped"]}
    merged["skipped"] = {e: why for e, why in skipped.items() if e not in measured}
    merged["cache_bytes_read"] = {**old.get("cache_bytes_read", {}), **row.get("cache_bytes_read", {})}
    kept = [
        [e for e in g if e not in row["decode_tokens_per_s"]]
        for g in old.get("engine_groups", [sorted(old[PER_ENGINE[0]])])
    ]
    merged["engine_groups"] = [g for g in kept if g] + row["engine_groups"]
    merged["load_average"] = old["load_average"] + row["load_average"]
    merged["cell_seconds"] = old["cell_seconds"] + row["cell_seconds"]
    return [*others, merged]


def _earlier_result() -> dict:
    from generator.bench import load_results

    try:
        data = load_results(TOPIC, "throughput_checkpoints")
    except FileNotFoundError:
        return {"rows": [], "setup": {}}
    return data if "bandwidth_samples_gbs" in data["setup"] else {"rows": [], "setup": {}}


def _cache_bytes_held(name: str, held: int) -> float:
    from proposals.text_pipeline.export import exported_folder
    from proposals.text_pipeline.folder import ModelFolder

    return cache_bytes_held(ModelFolder.read(exported_folder(name)).decoder, held)


def _cache_bytes_read(row: dict, engine: str) -> float:
    """The cache bytes one sequence's decode step of ``engine`` reads in ``row``'s cell."""
    return row.get("cache_bytes_read", {}).get(engine, row["cache_bytes_per_sequence"])


def _write(rows: list[dict], bandwidth: list[float], seconds: float) -> None:

    best = max(bandwidth)  # the least disturbed of the measurements
    rows.sort(key=lambda r: (MODELS.index(r["model"]) if r["model"] in MODELS else 99, r["batch"], r["context"]))
    for row in rows:
        row["roofline_share"] = roofline(row, lambda engine, held, r=row: _cache_bytes_read(r, engine), best)
    measured: dict[str, list[tuple[int, int]]] = {}
    for row in rows:
        measured.setdefault(row["model"], []).append((row["context"], row["batch"]))
    setup = {
        "threads": THREADS,
        "bandwidth_gbs": best,
        "bandwidth_samples_gbs": bandwidth,
        "omp_wait_policy": OMP_WAIT_POLICY,
        "engine_processes": "one child process per engine; peak RSS per engine over a cell's runs",
        "measured_cells": {n: sorted(c) for n, c in measured.items()},
        "full_cells": FULL_CELLS,
        "bench_seconds": seconds,
        "openvino_cpu_defaults": _openvino_defaults(),
    }
    write_json(TOPIC, "throughput_checkpoints", rows, setup)


def _openvino_defaults() -> dict[str, str]:
    """openvino-genai runs at the CPU plug-in's defaults: on a CPU with bf16 that is bf16
    compute, and its KV cache has its own precision. Recorded so the page can say so."""
    try:
        import openvino as ov
    except ImportError:
        return {}
    core = ov.Core()
    return {
        key: core.get_property("CPU", key).get_type_name() for key in ("INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION")
    }


def _under_policy(policy: str, target: Callable, *args) -> list[dict]:
    """``target(conn, *args)`` in a child process whose OpenMP reads ``OMP_WAIT_POLICY=policy``
    ("default": unset) when it loads; the rows it sends back."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    process = ctx.Process(target=_with_policy, args=(policy, target, child, *args))
    process.start()
    rows = parent.recv()
    process.join()
    return rows


def _with_policy(policy: str, target: Callable, *args) -> None:
    set_wait_policy(policy)
    target(*args)


def transformers_diagnosis(steps: int = 16) -> list[dict]:
    """Why transformers decoded SmolLM2 so slowly on a busy machine: one decode step (64 tokens
    held) of the GGUF-loaded model and of a model built from the same config with random
    weights, at 1 and 2 torch threads interleaved, in a child process under OpenMP's default
    wait policy (workers spin before they sleep) and under ``OMP_WAIT_POLICY=PASSIVE``. Equal
    model times rule the GGUF load out; the policy and thread rows show what the shared cores do."""
    return [
        row for policy in ("default", "PASSIVE") for row in _under_policy(policy, _transformers_steps, steps, policy)
    ]


def llama_cpp_diagnosis(context: int = 128, steps: int = 32) -> list[dict]:
    """llama.cpp's decode rate on SmolLM2 (2 threads) under OpenMP's default wait policy and under
    ``OMP_WAIT_POLICY=PASSIVE``, each in a fresh process, twice, alternating."""
    return [
        row
        for policy in ("default", "PASSIVE", "default", "PASSIVE")
        for row in _under_policy(policy, _llama_cpp_rate, context, steps, policy)
    ]


def _llama_cpp_rate(conn, context: int, steps: int, policy: str) -> None:

    from proposals.text_pipeline.checkpoints import checkpoint_file

    try:
        run = llama_cpp_run(checkpoint_file(MODELS[0]), steps + 1, context)
    except ImportError as err:
        conn.send([{"omp_wait_policy": policy, "skipped": f"not installed ({err.name})"}])
        return
    run(prompts(8, 1, 20000))  # warm-up
    ttft, decode = run(prompts(context, 1, 20000, salt=1))
    row = {"omp_wait_policy": policy, "decode_tokens_per_s": steps / decode, "ttft_s": ttft}
    row["load_average"] = os.getloadavg()[0]
    print(row, flush=True)
    conn.send([row])


def _transformers_steps(conn, steps: int, policy: str) -> None:

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
                "omp_wait_policy": policy,
                "threads": threads,
                "gguf_ms": step_ms(gguf_model),
                "from_config_ms": step_ms(random_model),
                "load_average": os.getloadavg()[0],
            }
        )
        print(rows[-1], flush=True)
    conn.send(rows)


PROFILE_CONTEXTS = (128, 4096)
# The cell where this pipeline missed its goal against mobius's static graph (decode_gap).
GAP_CONTEXT = 4096
GAP_ENGINES = ("this pipeline, in place", "mobius static, in place")


def decode_op_profile(
    name: str = MODELS[0], contexts: tuple[int, ...] = PROFILE_CONTEXTS, steps: int = 16
) -> list[dict]:
    """Where a decode step goes on a packaged checkpoint, this pipeline's graph standard and
    fused beside mobius-onnx's static-cache graph (in place): onnxruntime's profiler, each op
    type's seconds per step and share (prefill and the first decode step left out), after a
    prompt of each of ``contexts`` tokens. Written beside the throughput result, whose goals
    it explains where they are missed."""
    import onnxruntime as ort

    from proposals.kv_cache.fusion import fuse_to_gqa
    from proposals.text_pipeline.checkpoints import checkpoint_file
    from proposals.text_pipeline.export import exported_folder
    from proposals.text_pipeline.folder import ModelFolder

    folder = ModelFolder.read(exported_folder(name))
    fused = fuse_to_gqa(folder.decoder)
    rows = []
    for context in contexts:
        capacity = context + steps + 2
        static = ir_serde_model(build_mobius(checkpoint_file(name), "static", max_seq_len=capacity))
        forms = {
            "standard": (folder.decoder, folder.external_data, lambda s: _profiled_runner(OrtRunner, s, folder)),
            "fused GQA": (fused, folder.external_data, lambda s: _profiled_runner(OrtRunner, s, folder, fused)),
            "mobius static, in place": (static, None, lambda s: MobiusStaticRunner(s, inplace=True)),
        }
        for form, (model, weights, make) in forms.items():
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            if weights is not None:
                options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(weights))
            events = _profile_events(options, model, make, context, steps, capacity)
            rows += [{"context": context, "form": form, **r} for r in _op_shares(events)]
    return rows


def ir_serde_model(model) -> onnx.ModelProto:
    from onnx_ir import serde

    return serde.serialize_model(model)


def _profiled_runner(kind, session, folder, decoder=None):
    runner = kind(
        decoder if decoder is not None else folder.decoder, threads=THREADS, external_data=folder.external_data
    )
    runner.session = session  # the profiling session on the same graph
    return runner


def _profile_events(options, model: onnx.ModelProto, make, context: int, steps: int, capacity: int) -> list[dict]:
    """The profiler's events of one prefill and ``steps + 1`` greedy decode steps."""
    import json
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="tp-ckprof-") as scratch:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(scratch) / "decode")
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        runner = make(session)
        runner.start(1, capacity)
        logits = runner.append(prompts(context, 1, 20000))
        for _ in range(steps + 1):
            logits = runner.append([[int(t)] for t in logits.argmax(-1)])
        return json.loads(Path(session.end_profiling()).read_text())


def _op_shares(events: list[dict]) -> list[dict]:
    runs = [e for e in events if e.get("name") == "model_run"]
    cutoff = runs[1]["ts"] + runs[1]["dur"]  # after the prefill and the first decode run
    kernels: dict[str, float] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= cutoff:
            kernels[e["args"]["op_name"]] = kernels.get(e["args"]["op_name"], 0.0) + e["dur"] * 1e-6
    count = len([r for r in runs if r["ts"] >= cutoff])
    wall = sum(r["dur"] for r in runs if r["ts"] >= cutoff) * 1e-6 / count
    total = sum(kernels.values())
    return [
        {"op": op, "s_per_step": t / count, "share": t / total, "run_s_per_step": wall}
        for op, t in sorted(kernels.items(), key=lambda kv: -kv[1])
    ]


def held_step(runner, held: int) -> Callable[[], object]:
    """One decode step of ``runner`` with ``held`` tokens in its cache, repeatable: each call
    rewinds the batch to ``held`` tokens first, so it writes the same slot and reads as much."""

    def step():
        runner.lengths = [held] * len(runner.lengths)
        return runner.append([[5]] * len(runner.lengths))

    return step


def decode_gap(
    name: str = MODELS[0], context: int = GAP_CONTEXT, new_tokens: int = NEW_TOKENS, rounds: int = 5
) -> tuple[list[dict], dict]:
    """The ``context`` x 1 cell's gap between this pipeline in place and mobius-onnx's
    static-cache graph in place, measured again in one process: each engine built as
    :func:`engine_run` builds it (the same cache capacity, ``context + new_tokens``), first the
    bench's own generations (``_generator_run``, ``_greedy_run``), interleaved over ``rounds``
    rounds, then one decode step with ``context`` tokens held (:func:`held_step`), interleaved,
    beside this pipeline's step in a cache of the decoder's whole context (what a capacity
    difference would cost) and the Generator's per-token choice (what the two run loops differ by)."""
    import copy

    from generator.bench import time_interleaved
    from proposals.text_pipeline import reference
    from proposals.text_pipeline.checkpoints import checkpoint_file
    from proposals.text_pipeline.export import exported_folder
    from proposals.text_pipeline.folder import ModelFolder

    capacity = context + new_tokens
    # mobius's graph first: its GGUF load and serialization peak before the other session exists
    static = MobiusStaticRunner(
        ort_session(build_mobius(checkpoint_file(name), "static", max_seq_len=capacity)), inplace=True
    )
    folder = ModelFolder.read(exported_folder(name))
    ours = OrtRunner(folder.decoder, threads=THREADS, external_data=folder.external_data)
    runs = {GAP_ENGINES[0]: _generator_run(ours, new_tokens), GAP_ENGINES[1]: _greedy_run(static, new_tokens, capacity)}
    samples: dict[str, list[tuple[float, float]]] = {engine: [] for engine in runs}
    load = [os.getloadavg()[0]]
    for round_ in range(rounds):
        for engine in list(runs)[round_ % 2 :] + list(runs)[: round_ % 2]:
            samples[engine].append(runs[engine](prompts(context, 1, ours.vocab_size, salt=1 + round_)))
        load.append(os.getloadavg()[0])
        print("round", round_, {e: round((new_tokens - 1) / s[-1][1], 1) for e, s in samples.items()}, flush=True)
    rows = [
        {
            "measure": "generation",
            "engine": engine,
            "capacity": capacity,
            "decode_tokens_per_s": (new_tokens - 1) / statistics.median(s[1] for s in runs_),
            "ttft_s": statistics.median(s[0] for s in runs_),
            "decode_tokens_per_s_each_round": [(new_tokens - 1) / s[1] for s in runs_],
        }
        for engine, runs_ in samples.items()
    ]
    # both caches hold the last generation's prompt and tokens: step from `context` tokens on
    whole = copy.copy(ours)  # the same session, its own cache of the decoder's whole context
    whole.start(1, ours.max_positions)
    for key, cache in ours.caches.items():
        whole.caches[key][:, :, : cache.shape[2]] = cache
    logits = ours.append([[5]])
    config = GenerationConfig(max_new_tokens=new_tokens)
    history = [list(range(context))]
    steps = {
        (GAP_ENGINES[0], capacity): held_step(ours, context),
        (GAP_ENGINES[1], capacity): held_step(static, context),
        (GAP_ENGINES[0], whole.capacity): held_step(whole, context),
        ("Generator's token choice", None): lambda: reference.choose(
            reference.process(logits, history, [1], config), config.sampling_config, None
        ),
    }
    times = time_interleaved({f"{e} @ {c}": f for (e, c), f in steps.items()}, batches=15, min_batch_s=0.2)
    load.append(os.getloadavg()[0])
    for (engine, slots), seconds in zip(steps, times.values(), strict=True):
        rows.append(
            {"measure": "decode step", "engine": engine, "capacity": slots, "held": context, "s_per_step": seconds}
        )
    return rows, {"load_average": load, "niceness": os.nice(0)}


THREADING_HELD = (128, 1024)  # tokens held: the float32 goal's and the roofline goal's cells


def threading_diagnosis(name: str = MODELS[0]) -> list[dict]:
    """One decode step of this pipeline in place with ``THREADING_HELD`` tokens held, its
    session's intra-op pool three ways, interleaved in one process: 2 threads sleeping between
    ops (how every session here runs), 2 threads spinning, and 1 thread. What the 2-thread
    pool's wake-ups cost per step, beside the step's roofline time."""
    from generator.bench import time_interleaved
    from proposals.text_pipeline.export import exported_folder
    from proposals.text_pipeline.folder import ModelFolder

    folder = ModelFolder.read(exported_folder(name))
    pools = {"2 threads, sleeping": (2, False), "2 threads, spinning": (2, True), "1 thread": (1, False)}
    rows = []
    for held in THREADING_HELD:
        steps = {}
        for pool, (threads, spinning) in pools.items():
            runner = OrtRunner(folder.decoder, threads=threads, external_data=folder.external_data, spinning=spinning)
            runner.start(1, held + 1)
            runner.append([prompts(held, 1, runner.vocab_size)[0]])
            steps[pool] = held_step(runner, held)
        times = time_interleaved(steps, batches=9, min_batch_s=0.3)
        weights = weight_bytes(name, GAP_ENGINES[0])
        rows += [{"held": held, "pool": p, "s_per_step": t, "weight_bytes": weights} for p, t in times.items()]
        print(held, {p: round(1 / t, 1) for p, t in times.items()}, flush=True)
    return rows


def kernels_per_step(name: str = MODELS[0]) -> list[dict]:
    """The nodes onnxruntime runs for one step of this pipeline's graph, its fused form and
    mobius's static-cache graph, after onnxruntime's own graph optimizations (counted in the
    optimized model it writes), by op type: each node is one wake-up of a sleeping pool."""
    import tempfile
    from collections import Counter

    import onnxruntime as ort

    from proposals.kv_cache.fusion import fuse_to_gqa
    from proposals.text_pipeline.checkpoints import checkpoint_file
    from proposals.text_pipeline.export import exported_folder
    from proposals.text_pipeline.folder import ModelFolder

    folder = ModelFolder.read(exported_folder(name))
    forms = {
        "this pipeline": (folder.decoder, folder.external_data),
        "this pipeline, fused GQA": (fuse_to_gqa(folder.decoder), folder.external_data),
        "mobius static": (ir_serde_model(build_mobius(checkpoint_file(name), "static", max_seq_len=256)), None),
    }
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for form, (model, weights) in forms.items():
            options = ort.SessionOptions()
            options.optimized_model_filepath = str(Path(scratch) / "optimized.onnx")
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name", "w.bin")
            if weights is not None:
                options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(weights))
            ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            optimized = onnx.load(options.optimized_model_filepath, load_external_data=False)
            ops = Counter(n.op_type for n in optimized.graph.node)
            rows.append({"form": form, "nodes": sum(ops.values()), "op_types": dict(ops.most_common())})
    return rows


def write_threading() -> None:
    """:func:`threading_diagnosis` to ``bench/throughput_checkpoints_threads.json``, with the
    read bandwidth measured beside it."""

    setup = {"model": MODELS[0], "load_average": [os.getloadavg()[0]], "bandwidth_gbs": memory_bandwidth_gbs()}
    rows = threading_diagnosis()
    setup["load_average"].append(os.getloadavg()[0])
    write_json(TOPIC, "throughput_checkpoints_threads", rows, setup)
    write_kernels()


def write_kernels() -> None:
    """:func:`kernels_per_step` to ``bench/throughput_checkpoints_kernels.json`` (a count, not a timing)."""
    write_json(TOPIC, "throughput_checkpoints_kernels", kernels_per_step(), {"model": MODELS[0]})


def write_decode_gap(rounds: int = 5) -> None:
    """:func:`decode_gap` to ``bench/throughput_checkpoints_gap.json``, beside what the
    throughput bench recorded in that cell."""
    rows, measured = decode_gap(rounds=rounds)
    cell = next(
        (r for r in _earlier_result()["rows"] if (r["model"], r["context"], r["batch"]) == (MODELS[0], GAP_CONTEXT, 1)),
        None,
    )
    recorded = {k: cell[k] for k in ("decode_tokens_per_s", "ttft_s", "load_average", "rounds")} if cell else {}
    setup = {
        "model": MODELS[0],
        "context": GAP_CONTEXT,
        "batch": 1,
        "new_tokens": NEW_TOKENS,
        "rounds": rounds,
        "threads": THREADS,
        "engines": list(GAP_ENGINES),
        "bench_recorded": recorded,
        **measured,
    }
    write_json(TOPIC, "throughput_checkpoints_gap", rows, setup)


def _cli(argv: list[str]) -> int:
    """``python -m proposals.text_pipeline.real_throughput [--cells ... | --profile | ...]``."""
    try:
        if "--profile" in argv:
            write_json(
                TOPIC,
                "throughput_checkpoints_ort_ops",
                decode_op_profile(),
                {"model": MODELS[0], "contexts": list(PROFILE_CONTEXTS), "steps": 16},
            )
        elif "--threading" in argv:
            write_threading()
        elif "--kernels" in argv:
            write_kernels()
        elif "--decode-gap" in argv:
            write_decode_gap()
        elif "--transformers-diagnosis" in argv:
            write_json(TOPIC, "transformers_diagnosis", transformers_diagnosis(), {"model": MODELS[0], "held": 64})
        elif "--recount-weights" in argv:
            recount_weights()
        elif "--llama-cpp-diagnosis" in argv:
            setup = {"model": MODELS[0], "context": 128, "steps": 32, "threads": THREADS}
            write_json(TOPIC, "llama_cpp_diagnosis", llama_cpp_diagnosis(), setup)
        elif "--cells" in argv:  # --cells "smollm2-135m-instruct:128x1,1024x1 gemma3-270m:128x1" [--engines "a;b"]
            plan = {}
            for part in argv[argv.index("--cells") + 1].split():
                name, cells = part.split(":")
                plan[name] = [tuple(int(x) for x in c.split("x")) for c in cells.split(",")]
            tokens = int(argv[argv.index("--new-tokens") + 1]) if "--new-tokens" in argv else NEW_TOKENS
            only = set(argv[argv.index("--engines") + 1].split(";")) if "--engines" in argv else None
            main(cells=plan, new_tokens=tokens, only=only, append="--append" in argv)
        else:
            main(quick="--quick" in argv)
    except UsageError as err:
        print(f"real_throughput: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(_cli(sys.argv))
