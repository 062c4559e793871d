"""Figures of the paged-attention page and its blog post, rendered from the committed bench
JSON (``proposals/paged_attention/bench/decode.json`` and ``memory.json``). Pages include
them with ``<!-- generated: module:function -->`` markers, so ``make bench`` updates the
prose together with the tables."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from generator.bench import (
    duration,
    load_results,
    machine_text,
    markdown_table,
    percent,
    percent_range,
    times,
    times_range,
)

TOPIC = "paged_attention"
BEST_GATHER = "paged [NB, BS, H·D] pool, 3-D K/V, in place"
PLAIN_RUN = "paged NHD pool, plain run"
FUNCTION_BODY = "PagedAttention function body, plain run"
WHOLE_POOL = "whole pool masked, no Gather, in place"
WIDE_POOL = "whole pool masked, pool 4x the context"
GOAL = 1.5  # the overhead the standard-op arrangements were meant to stay under


def _ratios(variant: str) -> dict[int, float]:
    """Context length -> ratio to the contiguous in-place decode, for one arrangement."""
    rows = load_results(TOPIC, "decode")["rows"]
    return {row["context"]: row["ratio"] for row in rows if row["variant"] == variant}


def _policies() -> dict[str, dict]:
    return {row["policy"]: row for row in load_results(TOPIC, "memory")["rows"]}


def bench_table(name: str = "decode") -> str:
    """The committed decode bench as a Markdown table of ratios (lower is better)."""
    rows = load_results(TOPIC, name)["rows"]
    contexts = sorted({row["context"] for row in rows})
    variants = list(dict.fromkeys(row["variant"] for row in rows))
    cell = {(r["variant"], r["context"]): r for r in rows}
    body = [
        [v, *(f"{times(cell[v, c]['ratio'])} ({duration(cell[v, c]['median_s'])})" for c in contexts)] for v in variants
    ]
    return markdown_table(["arrangement", *(f"context {c}" for c in contexts)], body, align="l" + "r" * len(contexts))


def best_gather_range() -> str:
    """The best Gather-based arrangement's cost over the contexts measured."""
    return times_range(_ratios(BEST_GATHER).values())


def plain_run_range() -> str:
    """The straightforward arrangement (NHD pool, plain run)."""
    return times_range(_ratios(PLAIN_RUN).values())


def function_body_range() -> str:
    """The PagedAttention function body, unfused, plain run."""
    return times_range(_ratios(FUNCTION_BODY).values())


def whole_pool_range() -> str:
    """Whole pool masked, when the pool holds only this sequence."""
    return times_range(_ratios(WHOLE_POOL).values())


def wide_pool_range() -> str:
    """Whole pool masked, with a pool larger than the context."""
    return times_range(_ratios(WIDE_POOL).values())


def best_gather_per_context() -> str:
    """``1.61× at context 2048 and 1.24× at 8192``."""
    parts = [
        f"{times(ratio)} at {'context ' if i == 0 else ''}{context}"
        for i, (context, ratio) in enumerate(_ratios(BEST_GATHER).items())
    ]
    return " and ".join(parts)


def goal_sentence() -> str:
    """Where the best arrangement meets the overhead goal, and where it misses it."""
    ratios = _ratios(BEST_GATHER)
    met = [str(c) for c, r in ratios.items() if r <= GOAL]
    missed = [str(c) for c, r in ratios.items() if r > GOAL]
    parts = [f"met at {', '.join(met)}"] if met else []
    parts += [f"missed at {', '.join(missed)}"] if missed else []
    return f"The {times(GOAL, 1)} goal is {' and '.join(parts)}"


def decode_setup() -> str:
    """Runtime, threads and machine of the committed decode run."""
    data = load_results(TOPIC, "decode")
    threads = "one thread" if data["setup"]["threads"] == 1 else f"{data['setup']['threads']} threads"
    return f"onnxruntime {data['machine']['onnxruntime']} CPU, {threads}, measured on {machine_text(data['machine'])}"


def max_length_waste() -> str:
    """Share of KV memory wasted by contiguous allocation at the maximum length."""
    return percent(_policies()["contiguous, max length"]["waste_share"])


def oracle_waste() -> str:
    """Share wasted by contiguous allocation sized at each sequence's actual final length."""
    return percent(_policies()["contiguous, actual length"]["waste_share"])


def paged_waste_range() -> str:
    """Share wasted by paged allocation, over the block sizes simulated."""
    return percent_range(
        r["waste_share"] for name, r in _policies().items() if name.startswith("paged, block") and "prefix" not in name
    )


def paged_fit_gain() -> str:
    """How many times as many sequences block-16 paging fits as max-length allocation."""
    policies = _policies()
    return times(policies["paged, block 16"]["sequences_fit"] / policies["contiguous, max length"]["sequences_fit"], 1)


def prefix_sharing_gain() -> str:
    """How many more sequences fit when full system-prompt blocks are shared."""
    policies = _policies()
    gain = policies["paged, block 16, prefix sharing"]["sequences_fit"] / policies["paged, block 16"]["sequences_fit"]
    return percent(gain - 1)


def shared_prompt_share() -> str:
    """The workload's share of requests that start with a shared system prompt (an input of
    the simulation, ``simulate.SHARED_FRACTION``)."""
    from proposals.paged_attention.simulate import SHARED_FRACTION

    return percent(SHARED_FRACTION)


def zoo_pass_summary(matrix: Mapping | None = None) -> str:
    """How many paged zoo cases pass on each runtime, from the conformance matrix."""
    from generator.docs import pass_counts

    cases, passed = pass_counts(TOPIC, matrix)
    return (
        f"Of the [{cases} zoo cases](#zoo-cases), {passed['onnxruntime']} pass on onnxruntime, "
        f"{passed['reference']} on `onnx.reference` and {passed['openvino']} on OpenVINO"
    )


# The paging picture of the blog post: a small seeded pool laid out by the project's own
# allocator and step planner, so the picture shows what the tests exercise.
PICTURE_BLOCK_SIZE = 4
PICTURE_POOL = 8
PICTURE_LENGTHS = (7, 6, 5)  # tokens per sequence; sequence 1 starts on sequence 0's first block
PICTURE_TOKEN = (1, 5)  # the (sequence, position) whose slot the picture traces
_COLOURS = ("#0072B2", "#D55E00", "#009E73")  # Okabe-Ito: distinguishable in colour-blind vision
_TINTS = ("#cfe3f1", "#f6d7c3", "#c7eadf")
_SHARED = ("#e6dcf0", "#6a3d9a")  # tint, edge of the block two sequences read
_INCH_PER_SLOT = 0.19  # one slot cell is about 18 px wide on the page


def paging_example() -> tuple[list[list[int]], np.ndarray, int]:
    """Each sequence's physical blocks, the step's block table and the traced token's slot."""
    from proposals.paged_attention.blocks import BlockAllocator, plan_step, slot_of

    pool = BlockAllocator(PICTURE_POOL, PICTURE_BLOCK_SIZE, seed=0)
    rows = [list(pool.reserve(0, PICTURE_LENGTHS[0]))]
    pool.share(1, rows[0][:1])  # a shared prompt of one full block (prefix caching)
    rows.append(list(pool.reserve(1, PICTURE_LENGTHS[1])))
    rows.append(list(pool.reserve(2, PICTURE_LENGTHS[2])))
    # Every sequence appends its last token this step.
    step = plan_step(rows, [n - 1 for n in PICTURE_LENGTHS], [1, 1, 1], PICTURE_BLOCK_SIZE)
    seq, pos = PICTURE_TOKEN
    return rows, step.block_table, slot_of(step.block_table[seq], pos, PICTURE_BLOCK_SIZE)


def paging_svg() -> str:
    """The block pool, each sequence's block table pointing into it (the shared prefix block
    reached from two sequences), and one token's (sequence, position) -> (block, offset)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch, Rectangle

    plt.rcParams["svg.hashsalt"] = "onnx-genai-proposals"
    rows, table, traced_slot = paging_example()
    bs, gap = PICTURE_BLOCK_SIZE, 0.5  # gap between blocks, in slot widths
    shared = {b for row in rows for b in row if sum(b in r for r in rows) > 1}
    owner: dict[int, int] = {}  # physical block -> the sequence that allocated it
    for seq, row in enumerate(rows):
        for block in row:
            owner.setdefault(block, seq)

    width = PICTURE_POOL * (bs + gap) - gap
    left, right, bottom, top = -0.1, width + 0.1, -3.6, 7.6
    fig = plt.figure(figsize=((right - left) * _INCH_PER_SLOT, (top - bottom) * _INCH_PER_SLOT))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.set_xlim(left, right)
    ax.set_ylim(bottom, top)
    pool_y, seq_y = 0.0, 4.6

    def colours(seq: int | None, block: int | None) -> tuple[str, str]:
        if block in shared:
            return _SHARED
        return ("#ffffff", "#9a9a9a") if seq is None else (_TINTS[seq], _COLOURS[seq])

    def cell(x: float, y: float, text: str, face: str, edge: str, lw: float = 0.8) -> None:
        ax.add_patch(Rectangle((x, y), 1, 1, facecolor=face, edgecolor=edge, linewidth=lw))
        ax.text(x + 0.5, y + 0.5, text, ha="center", va="center", fontsize=7.5, color="#1a1a1a")

    # The pool: every physical block, its slots numbered block * block_size + offset.
    pool_x = {b: b * (bs + gap) for b in range(PICTURE_POOL)}
    for b, x0 in pool_x.items():
        face, edge = colours(owner.get(b), b)
        for o in range(bs):
            cell(x0 + o, pool_y, str(b * bs + o), face, edge)
        label = "free" if b not in owner else ("shared" if b in shared else f"seq {owner[b]}")
        ax.text(x0 + bs / 2, pool_y - 0.3, f"block {b}\n{label}", ha="center", va="top", fontsize=7.5, linespacing=1.1)

    # The sequences as the model sees them: positions grouped into logical blocks, each
    # logical block an arrow to the physical block its block-table entry names.
    seq_width = max(len(r) for r in rows) * (bs + gap) - gap
    spacing = (width - len(rows) * seq_width) / (len(rows) - 1)
    for seq, row in enumerate(rows):
        x_seq = seq * (seq_width + spacing)
        entries = ", ".join(str(int(b)) for b in table[seq])
        ax.text(x_seq, seq_y + 1.9, f"seq {seq}", fontsize=9, weight="bold", color=_COLOURS[seq], va="bottom")
        ax.text(x_seq + seq_width, seq_y + 1.9, f"block table [{entries}]", ha="right", va="bottom", fontsize=7.5)
        for logical, block in enumerate(row):
            x0 = x_seq + logical * (bs + gap)
            face, edge = colours(seq, block)
            for o in range(bs):
                pos = logical * bs + o
                if pos >= PICTURE_LENGTHS[seq]:  # reserved, not yet written
                    ax.add_patch(Rectangle((x0 + o, seq_y), 1, 1, facecolor="none", edgecolor="#9a9a9a", ls=":"))
                elif (seq, pos) == PICTURE_TOKEN:
                    cell(x0 + o, seq_y, str(pos), face, "#000000", lw=2.4)
                else:
                    cell(x0 + o, seq_y, str(pos), face, edge)
            ax.text(
                x0 + bs / 2, seq_y + 1.1, f"logical {logical}", ha="center", va="bottom", fontsize=7, color="#444444"
            )
            arrow = FancyArrowPatch(
                (x0 + bs / 2, seq_y - 0.05),
                (pool_x[block] + bs / 2, pool_y + 1.05),
                arrowstyle="-|>",
                mutation_scale=9,
                color=_COLOURS[seq],
                linewidth=1.2,
                shrinkA=0,
                shrinkB=0,
            )
            ax.add_patch(arrow)

    # The traced token: its pool slot outlined like its cell above, and the rule spelled out.
    seq, pos = PICTURE_TOKEN
    block, offset = divmod(traced_slot, bs)
    ax.add_patch(Rectangle((pool_x[block] + offset, pool_y), 1, 1, facecolor="none", edgecolor="#000000", lw=2.4))
    rule = (
        f"seq {seq}, position {pos}:  block = block_table[{seq}][{pos} // {bs}] = {block},  "
        f"offset = {pos} % {bs} = {offset},  slot = {block} · {bs} + {offset} = {traced_slot}"
    )
    pool_line = f"pool of {PICTURE_POOL} blocks of {bs} slots:  slot = block · {bs} + offset"
    ax.text(width / 2, bottom + 0.15, f"{pool_line}\n{rule}", ha="center", va="bottom", fontsize=8.5, linespacing=1.4)

    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None}, transparent=True)
    plt.close(fig)
    return buffer.getvalue()
