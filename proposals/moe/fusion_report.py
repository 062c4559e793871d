"""Fusion hit rate over every family zoo case, in six forms, written to
``proposals/moe/bench/fusion.json`` by ``make bench`` and rendered on the MoE page.

Forms: the MoE function op (its body inlined, GroupedMatMul kept), the fully inlined
body (GroupedMatMul's If too), the gather-per-slot body (GroupedMatMul as the RFC's
Gather + MatMul, inlined), the primitive form a model builder emits, and the dense
all-experts form, batched and as a per-expert loop (mobius-onnx's spelling). A hit must
also give the case's expected outputs on onnxruntime; a miss records why.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx.inliner
from onnx import numpy_helper

from generator.bench import load_results, write_json
from generator.errors import UsageError
from generator.ort import session
from generator.registry import select
from proposals.moe.fusion import fuse
from proposals.moe.ort_moe import node_attrs, why_not
from proposals.moe.schema import INPUT_NAMES, SCHEMA

FORMS = ("function op", "inlined body", "gather-per-slot", "primitive", "dense all-experts", "dense, per-expert loop")
BUILT = ("primitive", "dense all-experts", "dense, per-expert loop")  # from the case's arrays, X as [T, H]


def family_cases(names: tuple[str, ...] | None = None) -> list:
    """The zoo cases converted from transformers blocks (their input is hidden_states), built."""
    specs = [s for s in select(["moe"]) if not s.name.startswith("grouped_matmul")]
    built = [(s.name, s.build()) for s in specs if names is None or s.name in names]
    return [(name, case) for name, case in built if case.model.graph.input[0].name == "hidden_states"]


def _moe_node(model: onnx.ModelProto) -> onnx.NodeProto:
    return next(n for n in model.graph.node if (n.domain, n.op_type) == (SCHEMA.domain, SCHEMA.name))


def _form(model: onnx.ModelProto, form: str) -> onnx.ModelProto:
    from proposals.moe.grouped_matmul import with_gather_per_slot_body
    from proposals.moe.primitive import dense_model, primitive_model

    if form == "function op":
        return model
    if form == "inlined body":
        return onnx.inliner.inline_local_functions(model)
    if form == "gather-per-slot":
        return onnx.inliner.inline_local_functions(with_gather_per_slot_body(model))
    node = _moe_node(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    arrays = {f: inits[v] for f, v in zip(INPUT_NAMES, node.input, strict=False) if v in inits}
    arrays["X"] = np.zeros((1, arrays["router_weight"].shape[0]), np.float32)
    if form == "primitive":
        return primitive_model(arrays, node_attrs(node))
    return dense_model(arrays, node_attrs(node), unrolled=form == "dense, per-expert loop")


def _row(name: str, case, form: str) -> dict:
    node = _moe_node(case.model)
    names = {f: v for f, v in zip(INPUT_NAMES, node.input, strict=False) if v}
    semantic = why_not(node_attrs(node), set(names), {f for f in names if f != "X"})
    try:
        source = _form(case.model, form)
    except UsageError as err:
        reason = f"{semantic}; not built: {err}" if semantic else f"not built: {err}"
        return {"case": name, "form": form, "fused": False, "reason": reason}
    fused, report = fuse(source)
    if not report["fused"]:
        reason = "; ".join(report["misses"]) or f"no rule matches ({semantic or 'unexpected: the kernel could'})"
        return {"case": name, "form": form, "fused": False, "reason": reason}
    err = 0.0
    for data in case.datasets:
        x = data.inputs["hidden_states"]
        feed = {fused.graph.input[0].name: x.reshape(-1, x.shape[-1]) if form in BUILT else x}
        got = session(fused, threads=1).run(None, feed)[0].reshape(data.outputs["output"].shape)
        err = max(err, float(np.abs(got - data.outputs["output"]).max()))
    return {"case": name, "form": form, "fused": True, "max_abs_diff_vs_expected": err}


def compute(names: tuple[str, ...] | None = None) -> list[dict]:
    cases = family_cases(names)
    return [_row(n, c, form) for n, c in cases for form in FORMS]


def write() -> None:
    rows = compute()
    path = write_json("moe", "fusion", rows, {"forms": list(FORMS), "checked_on": "onnxruntime CPU, 1 thread"})
    hits = sum(r["fused"] for r in rows)
    print(f"fusion: {hits} of {len(rows)} (case, form) pairs fused -> {path}")


def load() -> list[dict]:
    return load_results("moe", "fusion")["rows"]


def hit_rate() -> str:
    """'N of M family cases' per form, for the page's prose."""
    rows = load()
    cases = len({r["case"] for r in rows})
    parts = [f"{form}: {sum(r['fused'] for r in rows if r['form'] == form)} of {cases}" for form in FORMS]
    return "; ".join(parts)


def fusion_table() -> str:
    """Each family case x form: fused (max error vs the case's expected outputs) or the
    number of the reason it missed, the reasons listed once below the table."""
    rows = load()
    by_case: dict[str, dict[str, dict]] = {}
    reasons: dict[str, int] = {}
    for r in rows:
        by_case.setdefault(r["case"], {})[r["form"]] = r
        if not r["fused"]:
            reasons.setdefault(r["reason"], len(reasons) + 1)
    lines = ["| case | " + " | ".join(FORMS) + " |", "|---|" + "---|" * len(FORMS)]
    for case_name, forms in by_case.items():
        cells = [
            f"fused ({forms[f]['max_abs_diff_vs_expected']:.1e})"
            if forms[f]["fused"]
            else f"missed ({reasons[forms[f]['reason']]})"
            for f in FORMS
        ]
        lines.append(f"| {case_name} | " + " | ".join(cells) + " |")
    legend = "\n".join(f"{n}. {reason}" for reason, n in reasons.items())
    return f"Hit rate, {hit_rate()}.\n\n" + "\n".join(lines) + "\n\nWhy each miss:\n\n" + legend


if __name__ == "__main__":
    write()
