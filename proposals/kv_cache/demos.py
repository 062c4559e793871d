"""Small executed demonstrations for the KV-cache proposal page (each returns text or data).

The page imports these and prints their results, so every number on it is computed
at build time from the same modules the zoo uses.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from generator.onnx_build import seeded
from generator.ort import session
from proposals.kv_cache import build, reference


# --8<-- [start:slot_trace]
def slot_trace(mode: str, slots: int, chunks: Sequence[int]) -> str:
    """Which token sits in which cache slot after each step (token ids as values).

    ``chunks`` are the numbers of new tokens per step (a prompt, then 1s for decode).
    Linear steps write at ``lengths``; circular steps at ``seen % slots``.
    """
    cache = np.full((1, 1, slots, 1), -1.0, np.float32)  # -1 marks an empty slot
    seen = 0
    lines = [f"{'step':<14}{'write_indices':>14}{'nonpad_kv_seqlen':>18}   slots"]
    for size in chunks:
        tokens = np.arange(seen, seen + size, dtype=np.float32).reshape(1, 1, size, 1)
        cache = reference.tensor_scatter(cache, tokens, np.array([seen]), mode=mode)
        nonpad = min(seen + size, slots)
        cells = " ".join(f"t{int(x)}".rjust(3) if x >= 0 else "  ." for x in cache.ravel())
        label = f"t{seen}" if size == 1 else f"t{seen}..t{seen + size - 1}"
        lines.append(f"{label:<14}{seen:>14}{nonpad:>18}   [{cells} ]")
        seen += size
    return "\n".join(lines)


# --8<-- [end:slot_trace]


def _tokens(rng, steps: int, q_heads: int = 2, kv_heads: int = 1, head_dim: int = 4):
    return [
        tuple(rng.randn(1, h, 1, head_dim).astype(np.float32) for h in (q_heads, kv_heads, kv_heads))
        for _ in range(steps)
    ]


# --8<-- [start:circular_vs_window]
def circular_vs_window_on_ort(slots: int = 4, steps: int = 10) -> list[tuple[int, int, float]]:
    """Decode ``steps`` tokens two ways on onnxruntime and compare Y at each step.

    (a) circular TensorScatter into ``slots`` slots, ``nonpad_kv_seqlen = min(t+1, L)``;
    (b) linear TensorScatter into a full ``steps``-slot cache read by Attention-25
        with ``left_window_size = L - 1``.
    Returns ``(t, nonpad of (a), max |Ya - Yb|)`` per step.
    """
    shape = {"q_heads": 2, "kv_heads": 1, "head_dim": 4}
    ring = session(build.cache_step_model(max_len=slots, mode="circular", **shape))
    window = session(build.cache_step_model(max_len=steps, left_window_size=slots - 1, **shape))
    ring_kv = [np.zeros((1, 1, slots, 4), np.float32)] * 2
    full_kv = [np.zeros((1, 1, steps, 4), np.float32)] * 2
    rows = []
    for t, (q, k, v) in enumerate(_tokens(seeded(11), steps)):
        step = {"q": q, "k": k, "v": v, "write_indices": np.array([t])}
        y_ring, *ring_kv = ring.run(
            None,
            {
                **step,
                "nonpad_kv_seqlen": np.array([min(t + 1, slots)]),
                "past_key": ring_kv[0],
                "past_value": ring_kv[1],
            },
        )
        y_full, *full_kv = window.run(
            None,
            {
                **step,
                "nonpad_kv_seqlen": np.array([t + 1]),
                "past_key": full_kv[0],
                "past_value": full_kv[1],
            },
        )
        rows.append((t, min(t + 1, slots), float(np.abs(y_ring - y_full).max())))
    return rows


# --8<-- [end:circular_vs_window]


# --8<-- [start:chunk_wrap]
def visible_tokens(slot_tokens: np.ndarray, nonpad: int, q_len: int) -> list[list[int]]:
    """Token ids each query of a chunk attends under Attention's causal rule on *slots*."""
    offset = nonpad - q_len
    return [[int(slot_tokens[j]) for j in range(nonpad) if j <= i + offset] for i in range(q_len)]


def chunk_on_full_ring(slots: int = 4, seen: int = 6, chunk: int = 3) -> dict[str, object]:
    """Write a multi-token chunk into a circular buffer that is already full.

    Returns what each query sees (token ids), what sliding-window attention needs,
    and the max error of Y for the naive chunk and for the chunk split into one full
    part plus single-token steps.
    """
    slot_tokens = np.zeros(slots, np.int64)
    for t in range(seen + chunk):  # token t lives in slot t % L
        slot_tokens[t % slots] = t
    nonpad = min(seen + chunk, slots)
    sees = visible_tokens(slot_tokens, nonpad, chunk)
    needs = [list(range(max(0, p - slots + 1), p + 1)) for p in range(seen, seen + chunk)]

    rng = seeded(12)
    tokens = _tokens(rng, seen + chunk)
    exact = reference.run_circular(tokens, *[np.zeros((1, 1, slots, 4), np.float32)] * 2)
    before = exact[seen - 1]  # the ring after ``seen`` tokens
    q, k, v = (np.concatenate([t[i] for t in tokens[seen:]], axis=2) for i in range(3))
    naive = reference.attention(
        q,
        reference.tensor_scatter(before.present_key, k, np.array([seen]), mode="circular"),
        reference.tensor_scatter(before.present_value, v, np.array([seen]), mode="circular"),
        nonpad_kv_seqlen=np.array([nonpad]),
        is_causal=True,
    )
    wanted = np.concatenate([s.y for s in exact[seen:]], axis=2)
    split = reference.run_circular(tokens[seen:], before.present_key, before.present_value, seen=np.array([seen]))
    return {
        "slot_tokens": slot_tokens.tolist(),
        "sees": sees,
        "needs": needs,
        "naive_error": float(np.abs(naive - wanted).max()),
        "split_error": float(np.abs(np.concatenate([s.y for s in split], 2) - wanted).max()),
    }


# --8<-- [end:chunk_wrap]


# --8<-- [start:top_left]
def attended_keys(nonpad: bool, kv_len: int = 8) -> np.ndarray:
    """Attention weights of one causal query over ``kv_len`` keys, read off on onnxruntime.

    With ``V`` = identity and equal scores, ``Y`` equals the attention weights.
    """
    model = build.attention_model(q_heads=1, kv_heads=1, q_len=1, kv_len=kv_len, head_dim=kv_len, nonpad=nonpad)
    feeds = {
        "q": np.zeros((1, 1, 1, kv_len), np.float32),  # all scores equal
        "k": np.zeros((1, 1, kv_len, kv_len), np.float32),
        "v": np.eye(kv_len, dtype=np.float32)[None, None],
    }
    if nonpad:
        feeds["nonpad_kv_seqlen"] = np.array([kv_len])
    return session(model).run(None, feeds)[0].ravel()


# --8<-- [end:top_left]


# --8<-- [start:batch_wrap]
def scatter_spec_text_1_19(past, update, write_indices, axis):
    """The onnx 1.19-1.22 reference/spec pseudocode: ``np.mod`` on the *whole* index."""
    present = past.copy()
    max_len, seq = past.shape[axis], update.shape[axis]
    for prefix in np.ndindex(past.shape[:axis]):
        for s in range(seq):
            index = (*prefix, write_indices[prefix[0]] + s)
            present[tuple(np.mod(index, max_len))] = update[(*prefix, s)]  # wraps b too
    return present


def scatter_fixed(past, update, write_indices, axis):
    """The onnx 1.23.2 text: only the sequence index is taken modulo ``max_len``."""
    present = past.copy()
    max_len, seq = past.shape[axis], update.shape[axis]
    for prefix in np.ndindex(past.shape[:axis]):
        for s in range(seq):
            present[(*prefix, (write_indices[prefix[0]] + s) % max_len)] = update[(*prefix, s)]
    return present


# --8<-- [end:batch_wrap]


def openvino_import(model) -> str:
    """``ok`` if OpenVINO's ONNX frontend reads the model, else its summary error line.

    It calls the frontend directly, not through ``generator.runtimes``, to print the
    frontend's own message; the conformance matrix has the same result per case.
    """
    import openvino

    try:
        openvino.Core().read_model(model.SerializeToString(), b"")
    except Exception as err:  # noqa: BLE001 - any frontend failure is the answer
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        summary = [line for line in lines if "No conversion rule" in line]
        return (summary or lines)[0]
    return "ok"


# --8<-- [start:openvino_top_left]
def openvino_top_left_error(precision: str) -> float:
    """Max |Y_openvino - Y_numpy| of the top-left case on OpenVINO CPU at one precision hint.

    ``precision`` is OpenVINO's ``INFERENCE_PRECISION_HINT`` (``"bf16"``, ``"f32"``).
    The demo compiles the model itself: ``generator.runtimes.OpenVinoRuntime`` always
    compiles in f32, and the point here is what the CPU's default bf16 does.
    """
    import openvino

    from proposals.kv_cache import cases

    case = cases.attention_causal_without_nonpad_is_top_left()
    core = openvino.Core()
    model = core.read_model(case.model.SerializeToString(), b"")
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": precision})
    (ds,) = case.datasets
    y = compiled(dict(ds.inputs))[compiled.output(0)]
    return float(np.abs(y - ds.outputs["y"]).max())


# --8<-- [end:openvino_top_left]


# --8<-- [start:openvino_window]
def openvino_window_errors() -> dict[str, float]:
    """Max error of OpenVINO (f32) on the Attention-25 window case, against the windowed
    reference and against the same attention without the window."""
    from generator.runtimes import OpenVinoRuntime
    from proposals.kv_cache import cases

    case = cases.attention25_window_external_cache()
    (ds,) = case.datasets
    y = OpenVinoRuntime().load_model(case.model)(ds.inputs)["y"]
    q, k, v, nonpad = (ds.inputs[n] for n in ("q", "k", "v", "nonpad_kv_seqlen"))
    unwindowed = reference.attention(q, k, v, nonpad_kv_seqlen=nonpad, is_causal=True)
    return {
        "vs windowed reference": float(np.abs(y - ds.outputs["y"]).max()),
        "vs reference without window": float(np.abs(y - unwindowed).max()),
    }


# --8<-- [end:openvino_window]
