"""What the MoE page prints when it is built: the spec, parity and substitution tables,
the benchmark table. Every number is computed or read from the bench JSON at build time."""

from __future__ import annotations

import re
from functools import cache

import numpy as np

from generator.bench import duration, load_results, machine_text, markdown_table, percent, times, times_range
from generator.onnx_build import seeded
from generator.ort import session
from generator.registry import select


def spec_markdown() -> str:
    """The op's spec section, rendered from the schema with the Mixtral case's body.

    README.md includes it with a generated-markdown marker (not an exec block), so MkDocs
    rewrites and validates its links, which are relative to proposals/moe/README.md."""
    from generator.opspec import render_spec
    from proposals.moe.cases import mixtral
    from proposals.moe.schema import SCHEMA

    model = mixtral().model
    body = next(f for f in model.functions if f.name == SCHEMA.name)
    examples = [s for s in select(["moe"]) if s.name in EXAMPLES]
    return render_spec(SCHEMA, body, examples, catalogue_link="../../catalogue.md")


EXAMPLES = ("mixtral", "idle_expert", "shared_expert_only", "top1_gelu_biases")


def pieces_markdown() -> str:
    """Every piece the builder can call, printed by onnx.printer."""
    import onnx

    from proposals.moe.body import PIECES, piece_proto

    parts = []
    for name in PIECES:
        text = onnx.printer.to_text(piece_proto(name))
        parts.append(
            f'??? note "{name}"\n    ```\n' + "\n".join(f"    {line}" for line in text.splitlines()) + "\n    ```\n"
        )
    return "\n".join(parts)


@cache  # shown on the proposal page and in its blog post: computed once per build
def parity_table() -> str:
    """Each family: from_transformers on onnxruntime vs the transformers block."""
    from proposals.moe.families import SUPPORTED, TINY, block_output, tiny_block
    from proposals.moe.hf import block_arrays, from_transformers
    from proposals.moe.schema import SCHEMA

    rows = ["| family | block class | attributes set | max abs diff (ORT vs transformers) |", "|---|---|---|---|"]
    for family in SUPPORTED:
        block = tiny_block(family, seed=0)
        x = seeded(1).randn(2, 5, 16).astype(np.float32)
        got = session(from_transformers(block)).run(None, {"hidden_states": x})[0]
        diff = float(np.abs(got - block_output(block, x)).max())
        _, attrs = block_arrays(block)
        shown = ", ".join(f"`{k}={v}`" for k, v in attrs.items() if v != SCHEMA.attribute(k).default)
        rows.append(f"| {family} | `{TINY[family][2]}` | {shown} | {diff:.1e} |")
    return "\n".join(rows)


def parity_families() -> str:
    """'N transformers model families' (inline): the families :func:`parity_table` checks."""
    from proposals.moe.families import SUPPORTED

    return f"{len(SUPPORTED)} transformers model families"


def export_families() -> str:
    """'N families' (inline): the tiny causal LMs the export path checks."""
    from proposals.moe.families import CAUSAL_LM

    return f"{len(CAUSAL_LM)} families"


def substitution_table() -> str:
    """Each family: what the com.microsoft.MoE rewrite did, and the output difference."""
    from proposals.moe.families import SUPPORTED, tiny_block
    from proposals.moe.hf import from_transformers
    from proposals.moe.substitute import substitute

    rows = ["| family | result | max abs diff vs inlined body (ORT) |", "|---|---|---|"]
    for family in SUPPORTED:
        model = from_transformers(tiny_block(family, seed=0))
        substituted, report = substitute(model)
        x = seeded(2).randn(2, 5, 16).astype(np.float32)
        a = session(model).run(None, {"hidden_states": x})[0]
        b = session(substituted).run(None, {"hidden_states": x})[0]
        result = report["moe"]
        result = "**com.microsoft.MoE**" if result == "com.microsoft.MoE" else f"left: {result}"
        rows.append(f"| {family} | {result} | {float(np.abs(a - b).max()):.1e} |")
    return "\n".join(rows)


def _bench(name: str = "moe") -> dict:
    return load_results("moe", name)


def _variants(data: dict) -> list[str]:
    """The bench's variants in the order of its docstring (the JSON sorts its keys)."""
    from proposals.moe.bench import BODY, EAGER, FUSED, GATHER, KERNEL, PRIMITIVE

    order = [KERNEL, FUSED, PRIMITIVE, BODY, GATHER, EAGER]
    return sorted(data["rows"][0]["seconds"], key=lambda v: order.index(v) if v in order else len(order))


def bench_table(name: str = "moe") -> str:
    """Times and ratios to com.microsoft.MoE from ``proposals/moe/bench/<name>.json``, and
    each variant's share of the weight-read roofline where the block is bandwidth-bound."""
    data = _bench(name)
    variants = _variants(data)
    times_table = markdown_table(
        ["E", "T", *variants],
        (
            [
                r["experts"],
                r["tokens"],
                *(f"{duration(r['seconds'][v])} ({times(r['ratio_to_kernel'][v])})" for v in variants),
            ]
            for r in data["rows"]
        ),
        align="rr",
    )
    note = (
        f"Memory bandwidth measured in the same run: {data['setup']['bandwidth_gbs']:.1f} GB/s (torch sum over "
        "256 MiB). The roofline is the weight bytes of the distinct experts the tokens select, read "
        "once at that bandwidth; at T = 256 every expert gets many rows and the GEMMs are "
        "compute-bound, so no share is given there."
    )
    roofline = markdown_table(
        ["E", "T", "experts read", "roofline", *variants],
        (
            [
                r["experts"],
                r["tokens"],
                f"{r['distinct_experts']:.1f} ({r['weight_bytes'] / 1e6:.1f} MB)",
                duration(r["roofline_seconds"]),
                *(percent(r["roofline_share"][v]) for v in variants),
            ]
            for r in data["rows"]
            if "roofline_share" in r
        ),
        align="rr",
    )
    return "\n\n".join([times_table, note, roofline, f"Measured on {machine_text(data['machine'])}."])


def _ratios(variant: str, name: str = "moe") -> list[float]:
    return [row["ratio_to_kernel"][variant] for row in _bench(name)["rows"]]


def fused_vs_kernel(name: str = "moe") -> str:
    """The fused primitive form's time over the kernel's, over every size (inline)."""
    return times_range(_ratios("primitive, fused", name), 2)


def body_vs_kernel(name: str = "moe") -> str:
    """The inlined function body's time over the kernel's, over every size (inline)."""
    return times_range(_ratios("function body (inlined)", name), 2)


def primitive_vs_kernel(name: str = "moe") -> str:
    """The unfused primitive form's time over the kernel's, over every size (inline)."""
    return times_range(_ratios("primitive (unfused)", name), 2)


def _goal(limit: float) -> str:
    """A goal on time / kernel time, in the words of the issue: a speed share when it is
    about recovering the kernel, a time bound otherwise."""
    return f"at least {times(1 / limit)} the kernel's speed" if limit < 1.1 else f"within {times(limit)} of the kernel"


def bench_goals(name: str = "moe") -> str:
    """Each goal of the benchmark, met or missed at each size."""
    data = _bench(name)
    lines = []
    for variant, limit in sorted(data["setup"]["goals"].items(), key=lambda kv: kv[1]):
        verdicts = [
            f"E={r['experts']} T={r['tokens']}: {times(r['ratio_to_kernel'][variant])}"
            + ("" if r["ratio_to_kernel"][variant] <= limit else " (missed)")
            for r in data["rows"]
        ]
        met = sum(r["ratio_to_kernel"][variant] <= limit for r in data["rows"])
        lines.append(
            f"- **{variant}**, {_goal(limit)}: met at {met} of {len(data['rows'])} sizes. "
            f"Time / kernel time: {'; '.join(verdicts)}."
        )
    return "\n".join(lines)


CONTROL_FLOW = ("If", "Loop")  # their subgraph nodes are profiled one by one as well


def leaf_shares(shares: dict[str, float]) -> dict[str, float]:
    """Profiled node time per operator type with If and Loop left out (ORT times their
    subgraph nodes individually, so counting both would count that time twice)."""
    leaves = {op: share for op, share in shares.items() if op not in CONTROL_FLOW}
    total = sum(leaves.values()) or 1.0
    return dict(sorted(((op, share / total) for op, share in leaves.items()), key=lambda kv: -kv[1]))


def bench_profile(name: str = "moe", top: int = 4) -> str:
    """Where the time goes where a goal is missed: ORT profiler node time per operator type."""
    rows = [
        [
            r["experts"],
            r["tokens"],
            variant,
            ", ".join(f"{op} {percent(v)}" for op, v in list(leaf_shares(shares).items())[:top]),
        ]
        for r in _bench(name)["rows"]
        for variant, shares in r.get("profile", {}).items()
    ]
    if not rows:
        return "Every goal was met at every size, so no profile was taken."
    return markdown_table(["E", "T", "variant", "share of the node time, by operator type"], rows, align="rr")


def node_signature(model) -> list[tuple]:
    """Each node's (domain, operator, sorted attributes): what "the same graph" compares."""
    import onnx

    return [
        (n.domain, n.op_type, sorted((a.name, onnx.helper.get_attribute_value(a)) for a in n.attribute))
        for n in model.graph.node
    ]


def fused_and_kernel_nodes() -> tuple[list[tuple], list[tuple]]:
    """The node signatures of the bench's fused primitive form and of its kernel model, built
    on a small block."""
    from proposals.moe.bench import FUSED, KERNEL, models

    rng = seeded(0)
    arrays = {
        "X": np.zeros((1, 16), np.float32),
        "router_weight": rng.randn(16, 4).astype(np.float32),
        "fc1_weight": rng.randn(4, 16, 32).astype(np.float32),
        "fc2_weight": rng.randn(4, 16, 16).astype(np.float32),
    }
    built = models(arrays)
    return node_signature(built[FUSED]), node_signature(built[KERNEL])


def fused_is_kernel() -> str:
    """Whether fusing the bench's primitive form gives the kernel graph node for node
    (same operators, same attributes), checked on a small block when the page is built."""
    fused, kernel = fused_and_kernel_nodes()
    listed = " + ".join(f"`{op}`" for _, op, _ in fused)
    verdict = "the same graph as" if fused == kernel else "**not** the same graph as"
    return f"After fusion the primitive form is {listed}, {verdict} the hand-built kernel model"


def gather_per_slot_slowdown(name: str = "moe") -> str:
    """How much slower gather-per-slot is than com.microsoft.MoE at the bench's largest token
    count, read from ``proposals/moe/bench/<name>.json`` (the page cites it in prose)."""
    rows = _bench(name)["rows"]
    tokens = max(row["tokens"] for row in rows)
    ratios = [row["ratio_to_kernel"]["gather-per-slot body"] for row in rows if row["tokens"] == tokens]
    return f"{min(ratios):.0f}–{max(ratios):.0f}× slower than `com.microsoft.MoE` at T = {tokens}"


@cache  # shown on the proposal page and in its blog post: computed once per build
def plain_export_error() -> str:
    """First line of the cause when a tiny Mixtral is exported without the swap."""
    import torch

    from proposals.moe.families import Logits, tiny_causal_lm

    try:
        torch.onnx.export(
            Logits(tiny_causal_lm("mixtral")),
            (torch.zeros((1, 4), dtype=torch.int64),),
            dynamo=True,
            opset_version=21,
            verbose=False,
        )
    except Exception as err:  # noqa: BLE001 (the failure is what we show)
        cause = err.__cause__ or err
        text = (
            f"{type(err).__name__}: {str(err).splitlines()[0]}\n"
            f"caused by {type(cause).__name__}: {str(cause).splitlines()[0]}"
        )
        return re.sub(r"\x1b\[[0-9;]*m", "", text)  # the exporter colours its message
    return "exported without error (the failure shown here no longer happens)"


@cache  # shown on the proposal page and in its blog post: computed once per build
def export_and_compare(family: str) -> str:
    """Swap the MoE blocks, export, run on onnxruntime, compare logits with transformers."""
    import torch

    from proposals.moe.export import export, swap_moe_blocks
    from proposals.moe.families import Logits, tiny_causal_lm

    model = tiny_causal_lm(family)
    ids = np.random.RandomState(0).randint(0, 64, (2, 6))
    with torch.no_grad():
        expected = Logits(model)(torch.from_numpy(ids)).numpy()
    swapped = swap_moe_blocks(model)
    proto = export(
        Logits(model),
        (torch.from_numpy(ids),),
        dynamic_shapes=({0: torch.export.Dim("batch", max=8), 1: torch.export.Dim("seq", max=32)},),
    )
    got = session(proto).run(None, {proto.graph.input[0].name: ids})[0]
    moe_nodes = sum(n.op_type == "MoE" for n in proto.graph.node)
    return (
        f"{family}: swapped {swapped} blocks; exported graph has {moe_nodes} MoE nodes and "
        f"functions {sorted({f.name for f in proto.functions})}; "
        f"max |logits - transformers| = {float(np.abs(got - expected).max()):.1e} "
        f"(logits up to {float(np.abs(expected).max()):.2f})"
    )


def openvino_inlined() -> str:
    """Each MoE zoo case on OpenVINO CPU after onnx.inliner expands the model-local functions
    (the matrix's ``openvino-inlined`` column, run here on the committed zoo files)."""
    from generator.runtimes import OpenVinoInlinedRuntime
    from generator.verify import run_cell
    from generator.zoo import ZOO, load_manifest

    runtime = OpenVinoInlinedRuntime()
    lines = []
    for case_id, entry in load_manifest()["cases"].items():
        if case_id.startswith("moe/"):
            cell = run_cell(runtime, case_id, entry, ZOO)
            lines.append(f"{case_id.removeprefix('moe/'):32s} {cell.status}, max abs diff {cell.max_abs_err:.1e}")
    return "\n".join(lines)


def body_svg(case_name: str = "deepseek_v3") -> str:
    """A picture of the MoE function body that a zoo case's model carries."""
    from generator.graphs import function_svg
    from proposals.moe import cases

    model = getattr(cases, case_name)().model
    return function_svg(next(f for f in model.functions if f.name == "MoE"))


def coverage_count() -> str:
    """'N of the M causal-LM model types ...' (inline): the survey's model types less its
    expected refusals, each of which ``test_coverage.py`` checks (parity or the refusal)."""
    import transformers

    from proposals.moe.survey import EXPECTED_REFUSALS, NO_STANDALONE_BLOCK, moe_model_types

    types = moe_model_types()
    total = len(types) + len(NO_STANDALONE_BLOCK)
    converted = len(set(types) - set(EXPECTED_REFUSALS))
    return f"{converted} of the {total} causal-LM model types with an MoE in transformers {transformers.__version__}"


@cache  # computed once per site build
def coverage_table() -> str:
    """Every causal-LM MoE block class of the installed transformers: converted (max error
    of the MoE model on onnxruntime vs a float64 copy of the block) or refused (the reason)."""
    import transformers

    from generator.errors import UsageError
    from proposals.moe.hf import block_arrays, from_transformers
    from proposals.moe.schema import SCHEMA
    from proposals.moe.survey import NO_STANDALONE_BLOCK, block_output64, moe_model_types, tiny_block

    rows = ["| model type | block class | result | attributes measured |", "|---|---|---|---|"]
    converted = 0
    types = moe_model_types()
    for model_type in sorted([*types, *NO_STANDALONE_BLOCK]):
        if model_type in NO_STANDALONE_BLOCK:
            rows.append(f"| {model_type} | — | refused: {NO_STANDALONE_BLOCK[model_type]} | |")
            continue
        block = tiny_block(model_type, seed=0)
        try:
            model = from_transformers(block)
        except UsageError as err:
            rows.append(f"| {model_type} | `{types[model_type][0]}` | refused: {str(err).split(': ', 1)[-1]} | |")
            continue
        x = seeded(1).randn(2, 5, 16).astype(np.float32)
        got = session(model, threads=1).run(None, {"hidden_states": x})[0]
        diff = float(np.abs(got - block_output64(block, x.astype(np.float64))).max())
        _, attrs = block_arrays(block)
        shown = ", ".join(
            f"`{k}={round(v, 4) if isinstance(v, float) else v}`"
            for k, v in attrs.items()
            if k != "k" and v != SCHEMA.attribute(k).default
        )
        converted += 1
        rows.append(f"| {model_type} | `{types[model_type][0]}` | converted, max abs diff {diff:.1e} | {shown} |")
    total = len(types) + len(NO_STANDALONE_BLOCK)
    head = (
        f"transformers {transformers.__version__}: {total} causal-LM model types have an MoE; "
        f"{converted} convert to one MoE node, {total - converted} are refused.\n\n"
    )
    return head + "\n".join(rows)
