"""MoE on onnxruntime CPU: the inlined function body vs the substituted
``com.microsoft.MoE`` kernel vs transformers eager, side by side in one process.

Also timed: the body with GroupedMatMul forced to the RFC's gather-per-slot form,
to show why the body switches to a per-group Loop when experts repeat. At T=1 the
selected experts' weight bytes divided by the memory bandwidth measured in the same
run give the weight-read roofline; each variant's share of it is reported.
"""

from __future__ import annotations

import time

import numpy as np

from generator.bench import plot_ratios, time_interleaved, write_json
from generator.onnx_build import seeded
from generator.ort import session
from proposals.moe.build import moe_model
from proposals.moe.grouped_matmul import with_gather_per_slot_body
from proposals.moe.substitute import substitute

ATTRS = {"k": 2, "normalize_routing_weights": 1}  # Mixtral routing, SiLU-GLU experts


def memory_bandwidth_gbs(mib: int = 256) -> float:
    """DRAM read bandwidth: torch sum over a buffer far larger than the caches."""
    import torch

    torch.set_num_threads(2)
    buf = torch.ones(mib * (1 << 20) // 4)
    buf.sum()
    best = min(_timed(buf.sum) for _ in range(10))  # the best of 10: other jobs share the cores
    return mib * (1 << 20) / best / 1e9


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _mixtral_block(arrays: dict[str, np.ndarray], experts: int, hidden: int, inter: int):
    """transformers' Mixtral block holding the same weights (eager experts loop)."""
    import torch
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = MixtralConfig(
        hidden_size=hidden, intermediate_size=inter, num_local_experts=experts, num_experts_per_tok=2
    )
    config._experts_implementation = "eager"
    block = MixtralSparseMoeBlock(config).eval()
    with torch.no_grad():
        block.gate.weight.copy_(torch.from_numpy(arrays["router_weight"].T))
        block.experts.gate_up_proj.copy_(torch.from_numpy(arrays["fc1_weight"].transpose(0, 2, 1)))
        block.experts.down_proj.copy_(torch.from_numpy(arrays["fc2_weight"].transpose(0, 2, 1)))
    return block


ROTATE = 8


def _rotating(fn, inputs):
    """A zero-argument call that feeds ``inputs`` in turn."""
    state = {"i": 0}

    def call():
        x = inputs[state["i"] % len(inputs)]
        state["i"] += 1
        return fn(x)

    return call


def _eager(block, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return block(torch.from_numpy(x)[None])[0].numpy()


EAGER = "transformers eager (1 thread)"


def run_config(experts: int, tokens_list, hidden: int, inter: int, batches: int, min_batch_s: float) -> list[dict]:
    import torch

    # One torch thread: with two, torch's OpenMP pool goes cold after every ORT run and,
    # on 2 shared cores, waits for a scheduler slice at each of the eager loop's many
    # parallel regions (measured 1.5 ms to 1 s per call for the same work).
    torch.set_num_threads(1)
    rng = seeded(experts)
    arrays = {
        "router_weight": rng.randn(hidden, experts).astype(np.float32),
        "fc1_weight": (rng.randn(experts, hidden, 2 * inter) * 0.02).astype(np.float32),
        "fc2_weight": (rng.randn(experts, inter, hidden) * 0.02).astype(np.float32),
    }
    model = moe_model({"X": np.zeros((1, hidden), np.float32), **arrays}, ATTRS, dynamic=True)
    sessions = {
        "body": session(model),
        "com.microsoft.MoE": session(substitute(model)[0]),
        "gather-per-slot body": session(with_gather_per_slot_body(model)),
    }
    block = _mixtral_block(arrays, experts, hidden, inter)
    rows = []
    for tokens in tokens_list:
        # rotate through several inputs so that at T=1 the selected experts change from
        # call to call and their weights are not simply re-read from the L3 cache
        xs = [rng.randn(tokens, hidden).astype(np.float32) for _ in range(ROTATE)]
        variants = {name: _rotating(lambda x, s=s: s.run(None, {"X": x})[0], xs) for name, s in sessions.items()}
        variants[EAGER] = _rotating(lambda x: _eager(block, x), xs)
        outs = {n: [f() for _ in xs] for n, f in variants.items()}  # one full rotation each
        err = max(float(np.abs(a - b).max()) for o in outs.values() for a, b in zip(o, outs["body"], strict=True))
        # long batches: a cold torch thread pool (after an ORT run) costs ms per call
        times = time_interleaved(variants, batches=batches, min_batch_s=min_batch_s)
        rows.append(
            {
                "experts": experts,
                "tokens": tokens,
                "k": 2,
                "hidden": hidden,
                "inter": inter,
                "seconds": times,
                "max_abs_diff": err,
                "ratio_to_kernel": {n: t / times["com.microsoft.MoE"] for n, t in times.items()},
            }
        )
        print(
            f"E={experts:3d} T={tokens:4d} "
            + "  ".join(f"{n}: {t * 1e3:8.2f} ms ({t / times['com.microsoft.MoE']:.2f}x)" for n, t in times.items()),
            flush=True,
        )
    return rows


def write_results(rows, bandwidth, roofline_s, weight_bytes, hidden, inter) -> None:
    write_json(
        "moe",
        "moe",
        rows,
        bandwidth_gbs=bandwidth,
        roofline_seconds_t1=roofline_s,
        selected_weight_bytes_t1=weight_bytes,
        attrs=ATTRS,
    )
    labels = [f"E={r['experts']}\nT={r['tokens']}" for r in rows]
    series = {n: [r["ratio_to_kernel"][n] for r in rows] for n in ("body", "gather-per-slot body", EAGER)}
    plot_ratios(
        "moe",
        "moe",
        labels,
        series,
        xlabel="experts, tokens (k=2)",
        ylabel="time / com.microsoft.MoE",
        title=f"MoE on ORT CPU, hidden {hidden}, inter {inter} (lower is faster)",
    )


def main(quick: bool = False) -> None:
    if not quick:  # the fusion hit rate over every family zoo case (not a timing; ~30 s)
        from proposals.moe import fusion_report

        fusion_report.write()
    hidden, inter = (64, 128) if quick else (512, 1024)
    experts_list, tokens_list = ((8,), (1, 16)) if quick else ((8, 32), (1, 16, 256))
    batches, min_batch_s = (3, 0.005) if quick else (9, 0.1)
    bandwidth = memory_bandwidth_gbs(32 if quick else 256)
    rows = [row for e in experts_list for row in run_config(e, tokens_list, hidden, inter, batches, min_batch_s)]
    weight_bytes = 2 * 3 * hidden * inter * 4  # k experts' fc1 [H, 2I] + fc2 [I, H], fp32
    roofline_s = weight_bytes / (bandwidth * 1e9)
    for row in rows:
        if row["tokens"] == 1:
            row["roofline_share"] = {n: roofline_s / t for n, t in row["seconds"].items()}
    if not quick:  # a quick run is a smoke run: the committed results stay as they are
        write_results(rows, bandwidth, roofline_s, weight_bytes, hidden, inter)
    print(f"bandwidth {bandwidth:.1f} GB/s; T=1 roofline {roofline_s * 1e6:.0f} us for {weight_bytes / 1e6:.1f} MB")
    for row in rows:
        if "roofline_share" in row:
            print(
                f"E={row['experts']} T=1 roofline share: "
                + ", ".join(f"{n} {s:.0%}" for n, s in row["roofline_share"].items())
            )


if __name__ == "__main__":
    main()
