"""Small runnable demonstrations shown on the proposal page."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from generator.registry import Case, select
from generator.runtimes import OnnxRuntime, ReferenceRuntime
from generator.verify import compare
from proposals.paged_attention.streams import contiguous_outputs


def case_check_table() -> str:
    """Per paged zoo case: max |runtime - numpy reference| and |contiguous - reference|."""
    rows = [
        "| case | data sets | ORT vs reference | ReferenceEvaluator vs reference | "
        "KV-proposal linear buffer vs reference |",
        "|---|---:|---:|---:|---:|",
    ]
    runtimes = {"ort": OnnxRuntime(), "ref": ReferenceRuntime()}
    for spec in select(["paged_attention"]):
        built = spec.build()
        errors = {"ort": 0.0, "ref": 0.0, "linear": 0.0}
        runners = {key: rt.load_model(built.model) for key, rt in runtimes.items()}
        for data in built.datasets:
            for key, run in runners.items():
                errors[key] = max(errors[key], _max_error(run(data.inputs), data.outputs, built))
            if "cu_seqlens_q" in data.inputs:
                linear = {"output": contiguous_outputs(dict(data.inputs), "kv_reference")}
                errors["linear"] = max(errors["linear"], _max_error(linear, {"output": data.outputs["output"]}, built))
        linear = f"{errors['linear']:.1e}" if spec.name != "paged_rewritten_decoder_layer" else "(is one)"
        rows.append(f"| `{spec.name}` | {len(built.datasets)} | {errors['ort']:.1e} | {errors['ref']:.1e} | {linear} |")
    return "\n".join(rows)


def _max_error(actual: Mapping[str, np.ndarray], expected: Mapping[str, np.ndarray], built: Case) -> float:
    """Max abs error over ``expected``; raises if it is outside the case's tolerance."""
    ok, err, problem = compare(actual, expected, built.rtol, built.atol)
    if not ok:
        raise AssertionError(problem)
    return err
