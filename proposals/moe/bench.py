"""MoE on onnxruntime CPU, side by side in one process, at T in {1, 16, 256}:

- the **primitive form** a model builder emits (GroupedMatMul + standard ops), unfused;
- the same graph **after fusion** (:func:`proposals.moe.fusion.fuse`);
- the MoE **function body**, inlined (``onnx.inliner``);
- ``com.microsoft.MoE`` built directly (the kernel every ratio is taken against);
- the body with GroupedMatMul forced to the RFC's gather-per-slot form, and
  transformers' eager Mixtral block, for context.

The selected experts' weight bytes divided by the memory bandwidth measured in the same
run give a weight-read roofline; each variant's share of it is reported where the block
is bandwidth-bound (T <= 16). Where a goal is missed (fused >= 0.95x the kernel's speed,
body within 1.5x of it), ORT's profiler says which operators the body's time goes to.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping

import numpy as np
import onnx
import onnx.inliner
import onnx_ir as ir

from generator.bench import memory_bandwidth_gbs, plot_ratios, time_interleaved, write_json
from generator.onnx_build import builder_model, graph_builder, seeded
from generator.ort import session
from proposals.moe.build import moe_model
from proposals.moe.fusion import fuse
from proposals.moe.grouped_matmul import with_gather_per_slot_body
from proposals.moe.ort_moe import ORT_DOMAIN, ort_attrs, ort_fc1
from proposals.moe.primitive import primitive_model
from proposals.moe.schema import OPSET

ATTRS = {"k": 2, "normalize_routing_weights": 1}  # Mixtral routing, SiLU-GLU experts
KERNEL = "com.microsoft.MoE"
PRIMITIVE = "primitive (unfused)"
FUSED = "primitive, fused"
BODY = "function body (inlined)"
GATHER = "gather-per-slot body"
EAGER = "transformers eager (1 thread)"
GOALS = {FUSED: 1 / 0.95, BODY: 1.5}  # the most time / kernel time each may take
ROOFLINE_MAX_TOKENS = 16  # above this the expert GEMMs are compute-bound


# --8<-- [start:kernel]
def kernel_model(arrays: Mapping[str, np.ndarray], attrs: Mapping[str, object]) -> onnx.ModelProto:
    """The block as onnxruntime's own kernel: router MatMul, then com.microsoft.MoE with
    the expert weights in its ``[E, out, in]`` layout (gate/up interleaved)."""
    hidden = arrays["router_weight"].shape[0]
    b = graph_builder("moe_kernel", {"": OPSET, ORT_DOMAIN: 1})
    x = b.input("X", ir.DataType.FLOAT, ["T", hidden])

    def weight(name: str, array: np.ndarray) -> ir.Value:
        return b.initializer(ir.tensor(np.ascontiguousarray(array)), name=name)

    logits = b.op.MatMul(x, weight("router_weight", arrays["router_weight"]))
    fc1 = weight("fc1_experts_weights", ort_fc1(arrays["fc1_weight"], attrs))
    fc2 = weight("fc2_experts_weights", np.swapaxes(arrays["fc2_weight"], 1, 2))
    y = b.op.MoE(x, logits, fc1, None, fc2, _domain=ORT_DOMAIN, **ort_attrs(attrs, int(attrs["k"])))
    b.add_output(y, "Y")
    return builder_model(b)


# --8<-- [end:kernel]


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


def models(arrays: Mapping[str, np.ndarray]) -> dict[str, onnx.ModelProto]:
    """The ONNX variants of one block, all holding the same weights."""
    body = moe_model(arrays, ATTRS, dynamic=True)
    primitive = primitive_model(arrays, ATTRS)
    fused, report = fuse(primitive)
    if report["fused"] != 1:
        raise AssertionError(f"the fusion rules missed the bench's primitive block: {report}")
    return {
        PRIMITIVE: primitive,
        FUSED: fused,
        BODY: onnx.inliner.inline_local_functions(body),
        KERNEL: kernel_model(arrays, ATTRS),
        GATHER: onnx.inliner.inline_local_functions(with_gather_per_slot_body(body)),
    }


def distinct_experts(x: np.ndarray, router: np.ndarray, k: int) -> int:
    """How many experts the tokens of ``x`` select (their weights are read once each)."""
    logits = x.astype(np.float64) @ router.astype(np.float64)
    return len(np.unique(np.argsort(-logits, axis=-1, kind="stable")[:, :k]))


def profile(model: onnx.ModelProto, x: np.ndarray, runs: int = 20) -> dict[str, float]:
    """Share of the node time per operator type, from ORT's profiler (``enable_profiling``)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "moe")
        options.log_severity_level = 3
        sess = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            sess.run(None, {"X": x})
        events = json.loads(open(sess.end_profiling()).read())
    by_op: dict[str, float] = {}
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            kind = event["args"]["op_name"]
            by_op[kind] = by_op.get(kind, 0.0) + event["dur"]
    total = sum(by_op.values()) or 1.0
    ranked = sorted(by_op.items(), key=lambda kv: -kv[1])
    return {kind: dur / total for kind, dur in ranked}


def run_config(experts: int, tokens_list, hidden: int, inter: int, batches: int, min_batch_s: float) -> list[dict]:
    import torch

    # One torch thread: with two, torch's OpenMP pool goes cold after every ORT run and,
    # on 2 shared cores, waits for a scheduler slice at each of the eager loop's many
    # parallel regions (measured 1.5 ms to 1 s per call for the same work).
    torch.set_num_threads(1)
    rng = seeded(experts)
    arrays = {
        "X": np.zeros((1, hidden), np.float32),
        "router_weight": rng.randn(hidden, experts).astype(np.float32),
        "fc1_weight": (rng.randn(experts, hidden, 2 * inter) * 0.02).astype(np.float32),
        "fc2_weight": (rng.randn(experts, inter, hidden) * 0.02).astype(np.float32),
    }
    built = models(arrays)
    sessions = {name: session(m) for name, m in built.items()}
    block = _mixtral_block(arrays, experts, hidden, inter)
    rows = []
    for tokens in tokens_list:
        # rotate through several inputs so that at T=1 the selected experts change from
        # call to call and their weights are not simply re-read from the L3 cache
        xs = [rng.randn(tokens, hidden).astype(np.float32) for _ in range(ROTATE)]
        variants = {name: _rotating(lambda x, s=s: s.run(None, {"X": x})[0], xs) for name, s in sessions.items()}
        variants[EAGER] = _rotating(lambda x: _eager(block, x), xs)
        outs = {n: [f() for _ in xs] for n, f in variants.items()}  # one full rotation each
        err = max(float(np.abs(a - b).max()) for o in outs.values() for a, b in zip(o, outs[KERNEL], strict=True))
        # long batches: a cold torch thread pool (after an ORT run) costs ms per call
        times = time_interleaved(variants, batches=batches, min_batch_s=min_batch_s)
        used = float(np.mean([distinct_experts(x, arrays["router_weight"], ATTRS["k"]) for x in xs]))
        row = {
            "experts": experts,
            "tokens": tokens,
            "k": ATTRS["k"],
            "hidden": hidden,
            "inter": inter,
            "seconds": times,
            "max_abs_diff_vs_kernel": err,
            "ratio_to_kernel": {n: t / times[KERNEL] for n, t in times.items()},
            "distinct_experts": used,
            "weight_bytes": used * 3 * hidden * inter * 4,  # fc1 [H, 2I] + fc2 [I, H], fp32
        }
        missed = [n for n, limit in GOALS.items() if row["ratio_to_kernel"][n] > limit]
        if missed:
            row["profile"] = {n: profile(built[n], xs[0]) for n in [*missed, KERNEL]}
        rows.append(row)
        print(
            f"E={experts:3d} T={tokens:4d} "
            + "  ".join(f"{n}: {t * 1e3:8.2f} ms ({t / times[KERNEL]:.2f}x)" for n, t in times.items()),
            flush=True,
        )
    return rows


def write_results(rows, bandwidth, hidden, inter) -> None:
    setup = {
        "attrs": ATTRS,
        "bandwidth_gbs": bandwidth,
        "baseline": KERNEL,
        "goals": GOALS,
        "ort_threads": 2,
        "rotation": ROTATE,
    }
    write_json("moe", "moe", rows, setup)
    labels = [f"E={r['experts']}\nT={r['tokens']}" for r in rows]
    series = {n: [r["ratio_to_kernel"][n] for r in rows] for n in (PRIMITIVE, FUSED, BODY, GATHER, EAGER)}
    plot_ratios(
        "moe",
        "moe",
        labels,
        series,
        xlabel="experts, tokens (k=2)",
        ylabel=f"time / {KERNEL}",
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
    for row in rows:
        row["roofline_seconds"] = row["weight_bytes"] / (bandwidth * 1e9)
        if row["tokens"] <= ROOFLINE_MAX_TOKENS:
            row["roofline_share"] = {n: row["roofline_seconds"] / t for n, t in row["seconds"].items()}
    if not quick:  # a quick run is a smoke run: the committed results stay as they are
        write_results(rows, bandwidth, hidden, inter)
    print(f"bandwidth {bandwidth:.1f} GB/s")
    for row in rows:
        for name, limit in GOALS.items():
            verdict = "met" if row["ratio_to_kernel"][name] <= limit else "MISSED"
            print(f"E={row['experts']} T={row['tokens']} {name}: {row['ratio_to_kernel'][name]:.2f}x ({verdict})")
        if "roofline_share" in row:
            print("  roofline share: " + ", ".join(f"{n} {s:.0%}" for n, s in row["roofline_share"].items()))


if __name__ == "__main__":
    main()
