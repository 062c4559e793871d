"""Benchmark helpers for ``make bench``: interleaved timing, JSON results, ratio plots.

These machines are noisy (2 shared cores), so variants are always timed side by side
in one process, interleaved A B A B, in batches of at least ``min_batch_s`` of work,
and reported as medians and ratios against a baseline.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _calls_per_batch(fn: Callable[[], object], min_batch_s: float) -> int:
    fn()  # warm-up: first runs allocate and plan
    n = 1
    while True:
        start = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - start >= min_batch_s or n >= 1 << 20:
            return n
        n *= 2


def time_interleaved(
    variants: Mapping[str, Callable[[], object]],
    *,
    batches: int = 15,
    min_batch_s: float = 0.02,
) -> dict[str, float]:
    """Median seconds per call of each variant, measured interleaved in one process."""
    sizes = {name: _calls_per_batch(fn, min_batch_s) for name, fn in variants.items()}
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(batches):
        for name, fn in variants.items():
            n = sizes[name]
            start = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - start) / n)
    return {name: statistics.median(values) for name, values in samples.items()}


def ratios(times: Mapping[str, float], baseline: str) -> dict[str, float]:
    """Each variant's time divided by the baseline's (lower is faster)."""
    return {name: t / times[baseline] for name, t in times.items()}


def machine() -> dict[str, str | int]:
    """Where a benchmark ran, stored beside its numbers."""
    import os

    import onnxruntime

    return {
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
        "cpus": os.cpu_count() or 0,
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
    }


def results_dir(topic: str) -> Path:
    """``proposals/<topic>/bench/``: results sit beside the proposal that cites them."""
    path = ROOT / "proposals" / topic / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(topic: str, name: str, rows: Sequence[Mapping], **meta: object) -> Path:
    """Write ``{meta, machine, rows}`` to ``proposals/<topic>/bench/<name>.json``."""
    path = results_dir(topic) / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), **meta, "rows": list(rows)}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return path


def plot_ratios(
    topic: str,
    name: str,
    x_values: Sequence[object],
    series: Mapping[str, Sequence[float]],
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    logy: bool = True,
) -> Path:
    """A line plot (one line per series) saved as ``proposals/<topic>/bench/<name>.svg``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "onnx-genai-proposals"
    legend_rows = -(-len(series) // 2)
    fig, ax = plt.subplots(figsize=(7, 3.6 + 0.25 * legend_rows), dpi=100)
    positions = range(len(x_values))
    for label, values in series.items():
        ax.plot(positions, values, marker="o", label=label)
    ax.set_xticks(list(positions), [str(x) for x in x_values])
    if logy:
        from matplotlib import ticker

        # Plain ratios (0.5, 1, 2, 5) instead of 6×10⁰-style minor labels on a short decade.
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    # The legend sits under the axes, where it cannot cover a line.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    path = results_dir(topic) / f"{name}.svg"
    fig.savefig(path, format="svg", metadata={"Date": None}, bbox_inches="tight")
    plt.close(fig)
    return path
