"""Small runnable demonstrations shown on the proposal page."""

from __future__ import annotations

import json

import numpy as np
from onnx.reference import ReferenceEvaluator

from generator.bench import results_dir
from generator.ort import session
from generator.registry import select
from proposals.paged_attention.streams import contiguous_outputs


def case_check_table() -> str:
    """Per paged zoo case: max |runtime - numpy reference| and |contiguous - reference|."""
    rows = [
        "| case | data sets | ORT vs reference | ReferenceEvaluator vs reference | "
        "KV-proposal linear buffer vs reference |",
        "|---|---:|---:|---:|---:|",
    ]
    for spec in select(["paged_attention"]):
        built = spec.build()
        names = [o.name for o in built.model.graph.output]
        errors = {"ort": 0.0, "ref": 0.0, "linear": 0.0}
        runners = {"ort": session(built.model).run, "ref": ReferenceEvaluator(built.model).run}
        for data in built.datasets:
            for key, run in runners.items():
                got = dict(zip(names, run(None, dict(data.inputs)), strict=True))
                errors[key] = max(errors[key], *(float(np.abs(got[n] - data.outputs[n]).max()) for n in names))
            if "cu_seqlens_q" in data.inputs:
                linear = contiguous_outputs(dict(data.inputs), "kv_reference")
                errors["linear"] = max(errors["linear"], float(np.abs(linear - data.outputs["output"]).max()))
        linear = f"{errors['linear']:.1e}" if spec.name != "paged_rewritten_decoder_layer" else "(is one)"
        rows.append(f"| `{spec.name}` | {len(built.datasets)} | {errors['ort']:.1e} | {errors['ref']:.1e} | {linear} |")
    return "\n".join(rows)


def bench_table(name: str = "decode") -> str:
    """The committed decode bench as a Markdown table of ratios (lower is better)."""
    data = json.loads((results_dir("paged_attention") / f"{name}.json").read_text())
    contexts = sorted({row["context"] for row in data["rows"]})
    variants = list(dict.fromkeys(row["variant"] for row in data["rows"]))
    cell = {(r["variant"], r["context"]): r for r in data["rows"]}
    header = "| arrangement | " + " | ".join(f"context {c}" for c in contexts) + " |"
    rows = [header, "|---|" + "---:|" * len(contexts)]
    for v in variants:
        cells = [f"{cell[v, c]['ratio']:.2f}× ({cell[v, c]['median_s'] * 1e3:.1f} ms)" for c in contexts]
        rows.append(f"| {v} | " + " | ".join(cells) + " |")
    return "\n".join(rows)
