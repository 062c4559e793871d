"""The divergence table: every known disagreement between a runtime and the spec reference.

Each row names the op, the runtimes it applies to, a predicate over the drawn example
(which feature triggers it), the reason, and the repro folder under ``repros/`` that
shows it upstream-ready. A mismatch that no row explains fails the fuzz run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from conformance.examples import Example


@dataclass(frozen=True)
class Divergence:
    slug: str  # repros/<slug>/
    op: str
    runtimes: tuple[str, ...]
    applies: Callable[[Example], bool]
    reason: str


def _p(example: Example, name: str, default=None):
    return example.params.get(name, default)


def _causal_past_shifted(example: Example) -> bool:
    """``is_causal`` with ``past_key`` where ``total - q_len`` differs from the past length."""
    return (
        _p(example, "cache") == "past"
        and bool(_p(example, "is_causal"))
        and _p(example, "kv_len") != _p(example, "q_len")
    )


TABLE: tuple[Divergence, ...] = (
    Divergence(
        "onnx-linearattention-body-empty-sequence",
        "LinearAttention",
        ("onnxruntime",),
        lambda e: _p(e, "seq") == 0,
        "LinearAttention-27's function body (which onnxruntime 1.32 runs) fails on T = 0: its Reshape to "
        "(B, T, -1, D) cannot infer -1 for a size-0 tensor; over no token present_state is past_state",
    ),
    Divergence(
        "onnx-reference-attention-qk-mode0-softcap",
        "Attention",
        ("reference",),
        lambda e: _p(e, "qk_mode") == 0 and bool(_p(e, "softcap")),
        "onnx 1.23.2 ReferenceEvaluator returns the softcapped scores as qk_matmul_output mode 0 "
        "(op_attention.py overwrites the raw product with the softcap); mode 0 is the raw QK matmul",
    ),
    Divergence(
        "onnxruntime-attention-qk-mode2-lowest-not-inf",
        "Attention",
        ("onnxruntime",),
        lambda e: _p(e, "qk_mode") == 2,
        "onnxruntime 1.32 CPU writes -3.4028235e38 (float lowest), not -inf, at disallowed positions "
        "of qk_matmul_output mode 2",
    ),
    Divergence(
        "onnxruntime-attention-short-mask-rejected",
        "Attention",
        ("onnxruntime",),
        lambda e: bool(_p(e, "mask_short")),
        "onnxruntime 1.32 CPU rejects an attn_mask shorter than the key length ('inconsistent "
        "total_sequence_length'); Attention-24 allows it (padded with -inf) when nonpad_kv_seqlen is given",
    ),
    Divergence(
        "openvino-attention-causal-past-offset",
        "Attention",
        ("openvino",),
        _causal_past_shifted,
        "OpenVINO 2026.4.1 aligns is_causal at total_len - q_len when past_key is given and the new K is "
        "longer or shorter than Q; the spec's offset is past_sequence_length",
    ),
    Divergence(
        "onnxruntime-attention-causal-past-offset",
        "Attention",
        ("onnxruntime",),
        _causal_past_shifted,
        "onnxruntime 1.32 CPU aligns is_causal at total_len - q_len when past_key is given and the new K is "
        "longer or shorter than Q; the spec's offset is past_sequence_length",
    ),
    Divergence(
        "tract-attention-causal-past-top-left",
        "Attention",
        ("tract",),
        lambda e: _p(e, "cache") == "past" and bool(_p(e, "is_causal")),
        "tract 0.23.9 aligns is_causal top-left (offset 0) when past_key is given; the spec's offset is "
        "past_sequence_length, so the new queries do not see the cached keys they should",
    ),
    Divergence(
        "tract-attention-bool-mask-added",
        "Attention",
        ("tract",),
        lambda e: _p(e, "mask") == "bool",
        "tract 0.23.9 adds a bool attn_mask as 1.0/0.0 to the scores instead of excluding the False keys "
        "(when the value head size differs from the key head size; otherwise it refuses the bool mask)",
    ),
    Divergence(
        "openvino-attention25-window-ignored",
        "Attention",
        ("openvino",),
        lambda e: _p(e, "left", -1) >= 0 or _p(e, "right", -1) >= 0,
        "OpenVINO 2026.4.1 imports Attention-25 but ignores left_window_size/right_window_size",
    ),
)


def find(example: Example, runtime_names: Sequence[str]) -> Divergence | None:
    """The first row that explains ``example`` on a runtime known by any of ``runtime_names``."""
    for row in TABLE:
        if row.op == example.op and set(row.runtimes) & set(runtime_names) and row.applies(example):
            return row
    return None
