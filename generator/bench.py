"""Benchmark helpers for ``make bench``: interleaved timing, JSON results, tables, ratio plots.

These machines are noisy (2 shared cores), so variants are always timed side by side
in one process, interleaved A B A B, in batches of at least ``min_batch_s`` of work,
and reported as medians and ratios against a baseline.

Every committed result has one shape, ``proposals/<topic>/bench/<name>.json``::

    {"benchmark": name,
     "machine": {...},      # where it ran (``machine()``)
     "setup": {...},        # what was measured: shapes, threads, timing, baseline, ...
     "rows": [{...}, ...]}  # one flat record per measurement

and every page renders its table from it with ``markdown_table``.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
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


def memory_bandwidth_gbs(mib: int = 256) -> float:
    """DRAM read bandwidth in GB/s: the best of 10 torch sums over a ``mib`` MiB buffer (far
    larger than the caches), on 2 threads; the roofline the benches report shares of."""
    import torch

    torch.set_num_threads(2)
    buf = torch.ones(mib * (1 << 20) // 4)
    buf.sum()
    best = min(_seconds(buf.sum) for _ in range(10))  # the best of 10: other jobs share the cores
    return mib * (1 << 20) / best / 1e9


def _seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def cpu_model() -> str:
    """The CPU's model name as the kernel reports it (``platform.processor()`` is empty on
    most Linux machines)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def cpu_flags(wanted: Iterable[str]) -> list[str]:
    """Which of ``wanted`` (``/proc/cpuinfo`` flag names, e.g. ``avx512_bf16``) the CPU has."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text() if cpuinfo.exists() else ""
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return [flag for flag in wanted if flag in flags]


def machine() -> dict[str, str | int]:
    """Where a benchmark ran, stored beside its numbers: CPU model, cores, versions."""
    import os

    import numpy
    import onnx
    import onnxruntime

    return {
        "machine": platform.machine(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count() or 0,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def machine_text(recorded: Mapping[str, object]) -> str:
    """One line naming the machine a committed result was measured on. Results written
    before the CPU model was recorded (only ``processor: unknown``) say so."""
    cpu = recorded.get("cpu") or "CPU model not recorded"
    names = {"python": "Python", "onnxruntime": "onnxruntime", "onnx": "onnx"}
    versions = ", ".join(f"{shown} {recorded[name]}" for name, shown in names.items() if name in recorded)
    return f"{recorded['machine']}, {cpu}, {recorded['cpus']} logical CPUs, {versions}"


RESULT_KEYS = ("benchmark", "machine", "setup", "rows")


def load_results(topic: str, name: str) -> dict:
    """The committed ``proposals/<topic>/bench/<name>.json`` (the shape ``write_json`` writes)."""
    path = ROOT / "proposals" / topic / "bench" / f"{name}.json"
    data = json.loads(path.read_text())
    if not isinstance(data, dict) or sorted(data) != sorted(RESULT_KEYS):
        raise ValueError(f"{path}: a bench result has the keys {', '.join(RESULT_KEYS)}")
    return data


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]], *, align: str = "") -> str:
    """A Markdown table: one header row, then one line per row (cells already formatted).
    ``align`` gives each column's alignment (``l``/``r``), left by default."""
    marks = [{"r": "---:"}.get(a, "---") for a in align.ljust(len(header), "l")]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _span(low: str, high: str, unit: str) -> str:
    return f"{low}{unit}" if low == high else f"{low}–{high}{unit}"


def times(ratio: float, places: int = 2) -> str:
    """A ratio as ``1.44×`` (``3,907×`` when large)."""
    return f"{ratio:,.{0 if ratio >= 100 else places}f}×"


def times_range(ratios: Iterable[float], places: int = 1) -> str:
    """The span of some ratios, ``1.2–1.7×`` (one value when both ends round alike)."""
    values = sorted(ratios)
    return _span(times(values[0], places)[:-1], times(values[-1], places)[:-1], "×")


def percent(share: float, places: int = 0) -> str:
    """A share in [0, 1] as ``62%``."""
    return f"{share * 100:.{places}f}%"


def percent_range(shares: Iterable[float], places: int = 1) -> str:
    """The span of some shares, ``0.6–2.1%``."""
    values = sorted(shares)
    return _span(percent(values[0], places)[:-1], percent(values[-1], places)[:-1], "%")


_UNITS = ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"))


def _unit(seconds: float) -> tuple[float, str]:
    return next(((scale, unit) for scale, unit in _UNITS if seconds >= scale), _UNITS[-1])


def _digits(value: float) -> str:
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def duration(seconds: float) -> str:
    """A time in the unit that fits: ``2.7 µs``, ``266 µs``, ``11 ms``."""
    scale, unit = _unit(seconds)
    return f"{_digits(seconds / scale)} {unit}"


def duration_range(seconds: Iterable[float]) -> str:
    """The span of some times in the unit of the largest: ``2.7–2.9 µs``."""
    values = sorted(seconds)
    scale, unit = _unit(values[-1])
    return _span(_digits(values[0] / scale), _digits(values[-1] / scale), f" {unit}")


def results_dir(topic: str) -> Path:
    """``proposals/<topic>/bench/``: results sit beside the proposal that cites them."""
    path = ROOT / "proposals" / topic / "bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_json(topic: str, name: str, rows: Sequence[Mapping], setup: Mapping[str, object]) -> Path:
    """Write ``{"benchmark", "machine", "setup", "rows"}`` to ``proposals/<topic>/bench/<name>.json``."""
    path = results_dir(topic) / f"{name}.json"
    payload = {"benchmark": name, "machine": machine(), "setup": dict(setup), "rows": list(rows)}
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
