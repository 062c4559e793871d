"""Bench: serving a seeded request mix on the paged decoder vs contiguous max-length buffers.

Workload (seeded with ``generator.onnx_build.seeded``): the paged-attention simulator's
request shape scaled from a 2048-token to the tiny model's 256-token context: own
prompt ~ lognormal (median 20 tokens, sigma 1.0, clipped to [2, 160]), output ~ lognormal
(median 25, sigma 1.0, clipped to [4, 256 - prompt]), 60% of requests start with one of
four shared system prompts of 16, 32, 48 or 64 tokens. Every request is queued at the
start; greedy decoding, no EOS, so each one generates exactly its output length.

Budget: KV slots for 8 sequences at the full context (2048 token slots, 128 blocks of
16). Side by side in one process, on onnxruntime CPU with one thread:

* **contiguous, max length**: the onnxruntime backend's runner on static batches of 8
  (``budget / context``) in arrival order, each batch running until its longest request
  ends (a buffer is reserved at the full context per sequence);
* **paged**: ``serving.PagedServer`` on a pool of the same 2048 slots, requests joining
  as blocks free up, without and with prefix sharing.

Every served request's tokens are checked equal to the contiguous run's before anything
is written. The same workload, each request observed at a seeded uniform point of its
output, also goes through the simulator (``paged_attention.simulate``) for comparison.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from generator.bench import write_json
from generator.onnx_build import seeded
from proposals.paged_attention import simulate
from proposals.text_pipeline.config import GenerationConfig
from proposals.text_pipeline.folder import decoder_bytes
from proposals.text_pipeline.runners import OrtRunner
from proposals.text_pipeline.serving import PagedCache, PagedServer

TOPIC = "text_pipeline"
CONTEXT = 256  # the tiny model's max_position_embeddings
SEQUENCES = 8  # the budget: this many sequences at full context
BLOCK_SIZE = 16
SYSTEM_PROMPTS = (16, 32, 48, 64)
SHARED_FRACTION = 0.6
THREADS = 1  # 2 shared cores: one thread keeps the side-by-side ratio steadier
SEED = 0


class SessionClock:
    """Wall time spent inside a session's ``run_with_iobinding`` (the rest of a run is the
    Python serving loop: scheduling, block tables, sampling)."""

    def __init__(self, session) -> None:
        self.seconds, self._run = 0.0, session.run_with_iobinding
        session.run_with_iobinding = self  # an instance attribute: this session only

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self._run(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


@dataclass(frozen=True)
class Job:
    prefix: int  # index into SYSTEM_PROMPTS, -1 for none
    prompt: tuple[int, ...]
    output: int


def workload(n: int, seed: int = SEED) -> list[Job]:
    """The seeded request mix of the module docstring (token ids drawn too)."""
    rng = seeded(seed)
    own = np.clip(np.round(rng.lognormal(np.log(20), 1.0, n)), 2, 160).astype(int)
    prefix = np.where(rng.rand(n) < SHARED_FRACTION, rng.randint(0, len(SYSTEM_PROMPTS), n), -1)
    systems = [rng.randint(2, 500, size).tolist() for size in SYSTEM_PROMPTS]
    jobs = []
    for p, length in zip(prefix.tolist(), own.tolist(), strict=True):
        shared = systems[p] if p >= 0 else []
        prompt = shared + rng.randint(2, 500, length).tolist()
        output = int(np.clip(np.round(rng.lognormal(np.log(25), 1.0)), 4, CONTEXT - len(prompt)))
        jobs.append(Job(p, tuple(prompt), output))
    return jobs


def contiguous(decoder: onnx.ModelProto, jobs: list[Job], weights: Path | None = None) -> tuple[dict, list[list[int]]]:
    """Static batches of SEQUENCES on max-length buffers: stats and every job's tokens."""
    runner = OrtRunner(decoder, threads=THREADS, external_data=weights)
    clock = SessionClock(runner.session)
    tokens: list[list[int]] = []
    steps = cached = 0
    start, cpu = time.perf_counter(), time.process_time()
    for first in range(0, len(jobs), SEQUENCES):
        batch = jobs[first : first + SEQUENCES]
        runner.start(len(batch), CONTEXT)
        logits = runner.append([list(j.prompt) for j in batch])
        out: list[list[int]] = [[] for _ in batch]
        for _ in range(max(j.output for j in batch)):
            chosen = logits.argmax(-1).tolist()
            for row, token in zip(out, chosen, strict=True):
                row.append(token)
            steps += 1
            cached += sum(
                min(len(j.prompt) + len(o) - 1, len(j.prompt) + j.output - 1) for j, o in zip(batch, out, strict=True)
            )
            if len(out[0]) < max(j.output for j in batch):
                # a finished row keeps being fed (the batch runs in step) but rewrites its last slot
                runner.lengths = [
                    min(n, len(j.prompt) + j.output - 1) for n, j in zip(runner.lengths, batch, strict=True)
                ]
                logits = runner.append([[row[-1]] for row in out])
        tokens += [o[: j.output] for o, j in zip(out, batch, strict=True)]
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    reserved = steps * SEQUENCES * CONTEXT
    stats = {
        "policy": "contiguous, max length",
        "sequences_mean": float(SEQUENCES),
        "sequences_max": SEQUENCES,
        "slots_in_use_mean": reserved / steps,
        "contiguous_reservation_mean": reserved / steps,
        "waste_share": 1 - cached / reserved,
        "steps": steps,
        "preemptions": 0,
        "wall_s": wall,
        "cpu_s": cpu,
        "session_share": clock.seconds / wall,
    }
    return stats, tokens


def paged(
    decoder: onnx.ModelProto, jobs: list[Job], share_prefixes: bool, weights: Path | None = None, watermark: int = 0
) -> tuple[dict, list[list[int]]]:
    """Every job submitted at once to a PagedServer on a pool of the same budget (admission
    leaving ``watermark`` blocks free while requests run)."""
    blocks = SEQUENCES * CONTEXT // BLOCK_SIZE
    cache = PagedCache(
        decoder, blocks, BLOCK_SIZE, threads=THREADS, share_prefixes=share_prefixes, external_data=weights
    )
    clock = SessionClock(cache.session)
    server = PagedServer(cache, watermark=watermark)
    start, cpu = time.perf_counter(), time.process_time()
    ids = [server.submit(list(j.prompt), GenerationConfig(max_new_tokens=j.output)) for j in jobs]
    done = {f.id: f for f in server.run()}
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    # while requests wait, memory bounds concurrency: every figure is over those steps
    # (over every step when nothing ever waited)
    full = [s for s in server.stats if s.waiting] or server.stats
    used = sum(s.blocks_used for s in full) * BLOCK_SIZE
    stats = {
        "policy": f"paged, block {BLOCK_SIZE}"
        + (", prefix sharing" if share_prefixes else "")
        + (f", watermark {watermark} blocks" if watermark else ""),
        "sequences_mean": float(np.mean([s.running for s in full])),
        "sequences_max": max(s.running for s in server.stats),
        "slots_in_use_mean": used / len(full),
        # what max-length contiguous buffers would reserve for the same running sequences
        "contiguous_reservation_mean": CONTEXT * float(np.mean([s.running for s in full])),
        "waste_share": 1 - sum(s.tokens_cached for s in full) / used,
        "steps": len(server.stats),
        "preemptions": sum(f.preemptions for f in done.values()),
        "recomputed_tokens": server.recomputed_tokens,
        "wall_s": wall,
        "cpu_s": cpu,
        "session_share": clock.seconds / wall,
    }
    return stats, [list(done[i].new_tokens) for i in ids]


def simulated(jobs: list[Job], seed: int = SEED) -> list[dict]:
    """The same jobs through the paged-attention simulator, each seen at a random point."""
    rng = seeded(seed + 1)
    requests = [
        simulate.Request(j.prefix, len(j.prompt), j.output, len(j.prompt) + int(np.ceil(u * j.output)), SYSTEM_PROMPTS)
        for j, u in zip(jobs, rng.rand(len(jobs)), strict=True)
    ]
    budget = SEQUENCES * CONTEXT
    results = [
        simulate.contiguous(requests, "max", max_len=CONTEXT, budget=budget),
        simulate.contiguous(requests, "actual", max_len=CONTEXT, budget=budget),
        simulate.paged(requests, BLOCK_SIZE, budget=budget),
        simulate.paged(requests, BLOCK_SIZE, share_prefix=True, budget=budget),
    ]
    return simulate.rows(results)


def measure(
    decoder: onnx.ModelProto,
    jobs: list[Job],
    repeats: int,
    weights: Path | None = None,
    watermarks: tuple[int, ...] = (),
) -> list[dict]:
    """The three policies, interleaved ``repeats`` times; tokens/s from the median wall time,
    and per CPU second of this process (steadier on a shared machine: onnxruntime runs on
    the calling thread). Every paged run's tokens are checked against the contiguous run's."""
    runs: dict[str, list[dict]] = {}
    for _ in range(repeats):
        base, expected = contiguous(decoder, jobs, weights)
        runs.setdefault(base["policy"], []).append(base)
        for share, watermark in [(False, 0), (True, 0)] + [(True, w) for w in watermarks]:
            stats, tokens = paged(decoder, jobs, share, weights, watermark)
            wrong = [i for i, (a, b) in enumerate(zip(tokens, expected, strict=True)) if a != b]
            if wrong:
                raise AssertionError(f"{stats['policy']}: requests {wrong[:5]} differ from the contiguous run")
            runs.setdefault(stats["policy"], []).append(stats)
    generated = sum(j.output for j in jobs)
    rows = []
    for same in runs.values():  # every figure but the wall time is the same in each repeat
        wall, cpu = (float(np.median([r[key] for r in same])) for key in ("wall_s", "cpu_s"))
        rows.append(
            {
                **same[0],
                "wall_s": wall,
                "cpu_s": cpu,
                "tokens_per_s": generated / wall,
                "tokens_per_cpu_s": generated / cpu,
                "repeats": repeats,
                "session_share": float(np.median([r["session_share"] for r in same])),
            }
        )
    for row in rows:
        row["speedup_over_contiguous"] = row["tokens_per_s"] / rows[0]["tokens_per_s"]
        row["cpu_speedup_over_contiguous"] = row["tokens_per_cpu_s"] / rows[0]["tokens_per_cpu_s"]
    return rows


def main(quick: bool = False) -> None:
    jobs = workload(16 if quick else 128)
    decoder = onnx.load_from_string(decoder_bytes("llama"))
    rows = measure(decoder, jobs, 1 if quick else 9)
    for r in rows:
        print(
            f"{r['policy']:32} {r['sequences_mean']:5.1f} seqs (max {r['sequences_max']}), "
            f"{r['slots_in_use_mean']:6.0f} slots, waste {r['waste_share']:.1%}, "
            f"{r['tokens_per_s']:6.0f} tok/s ({r['tokens_per_cpu_s']:6.0f} per CPU s), "
            f"{r['preemptions']} preemptions, {r['wall_s']:.2f} s, {r['session_share']:.0%} in onnxruntime"
        )
    sim = simulated(jobs)
    for r in sim:
        print(f"simulated {r['policy']:32} {r['sequences_fit']} fit, waste {r['waste_share']:.1%}")
    if quick:  # a smoke run: the committed results stay as they are
        return
    setup = {
        "model": "tiny llama (text_pipeline zoo decoder: hidden 64, 2 layers, context 256)",
        "requests": len(jobs),
        "prompt_tokens": [len(j.prompt) for j in jobs],
        "output_tokens": [j.output for j in jobs],
        "shared_prefix_requests": sum(j.prefix >= 0 for j in jobs),
        "context": CONTEXT,
        "budget_slots": SEQUENCES * CONTEXT,
        "block_size": BLOCK_SIZE,
        "system_prompts": list(SYSTEM_PROMPTS),
        "threads": THREADS,
        "simulated": sim,
    }
    write_json(TOPIC, "serving", rows, setup)


WATERMARKS = (4, 12)  # blocks of the 128-block pool kept free at admission, tried on the checkpoint


def checkpoint_main(name: str = "smollm2-135m-instruct", repeats: int = 1, requests: int = 128) -> None:
    """The same workload on a packaged checkpoint (its weights, the same budget of 2,048 slots
    and context 256), and admission watermarks against preemption: ``bench/serving_checkpoint.json``."""
    import os

    from proposals.text_pipeline.export import exported_folder
    from proposals.text_pipeline.folder import ModelFolder

    folder = ModelFolder.read(exported_folder(name))
    jobs = workload(requests)
    load = [os.getloadavg()[0]]  # recorded: the cores are shared
    rows = measure(folder.decoder, jobs, repeats, folder.external_data, WATERMARKS)
    load.append(os.getloadavg()[0])
    for r in rows:
        print(
            f"{r['policy']:32} {r['sequences_mean']:5.1f} seqs, waste {r['waste_share']:.1%}, "
            f"{r['tokens_per_s']:6.1f} tok/s, {r['preemptions']} preemptions, "
            f"{r.get('recomputed_tokens', 0)} tokens recomputed",
            flush=True,
        )
    setup = {
        "model": name,
        "requests": len(jobs),
        "context": CONTEXT,
        "budget_slots": SEQUENCES * CONTEXT,
        "block_size": BLOCK_SIZE,
        "threads": THREADS,
        "repeats": repeats,
        "generated_tokens": sum(j.output for j in jobs),
        "prompt_tokens_total": sum(len(j.prompt) for j in jobs),
        "load_average": load,
    }
    write_json(TOPIC, "serving_checkpoint", rows, setup)


if __name__ == "__main__":  # pragma: no cover
    import sys

    checkpoint_main(repeats=int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else 1)
