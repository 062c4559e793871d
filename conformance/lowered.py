"""``python -m conformance.lowered``: each runtime with and without the compatibility
lowering, on drawn TensorScatter, Attention and LinearAttention configurations.

Writes ``conformance/results/lowered.json`` (counts and first reasons per op and runtime, no
timings), from which the support page's "Compatibility lowering" table is built. The
configurations are the fuzzer's strategies, derandomized; the default 40 per op keeps the run
to a few minutes (IREE compiles every lowered model).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

from hypothesis import HealthCheck, given, settings

from conformance import harness
from conformance.engines import clean
from conformance.engines.lowered import LoweredRuntime
from conformance.examples import STRATEGIES, Example
from generator.runtimes import Runtime
from generator.verify import compare, first_line

LOWERED_JSON = harness.RESULTS_JSON.parent / "lowered.json"
OPS = ("Attention", "LinearAttention", "TensorScatter")


def run_plain(runtime: Runtime, example: Example) -> harness.Outcome:
    """Like :func:`harness.run_one`, without the divergence table: the lowered model is not
    the op the table's rows describe."""
    try:
        runner = runtime.load_model(example.model)
    except Exception as err:  # noqa: BLE001 - refusing a model is data
        return harness.Outcome("unsupported", clean(first_line(err)))
    try:
        actual = runner(dict(example.inputs))
    except Exception as err:  # noqa: BLE001
        return harness.Outcome("error", clean(first_line(err)))
    close, _, problem = compare(actual, example.expected, example.rtol, example.atol)
    return harness.Outcome("pass") if close else harness.Outcome("mismatch", problem)


def collect(examples: int, matrix: list[Runtime]) -> dict:
    cells: dict = defaultdict(lambda: defaultdict(lambda: {"original": defaultdict(int), "lowered": defaultdict(int)}))
    why: dict = defaultdict(dict)
    seen: set[str] = set()
    pairs = [(rt, LoweredRuntime(rt)) for rt in matrix]
    for op in OPS:

        @settings(
            max_examples=examples,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(STRATEGIES[op]())
        def run(example: Example) -> None:
            key = harness.example_digest(example)
            if key in seen:
                return
            seen.add(key)
            for original, lowered in pairs:
                for column, outcome in (
                    ("original", harness.run_cached(original, example)),
                    ("lowered", run_plain(lowered, example)),
                ):
                    status = outcome.status
                    cells[example.op][original.name][column][status] += 1
                    label = outcome.divergence.slug if outcome.divergence else outcome.detail
                    if status == "mismatch" and example.params.get("fully_masked"):
                        label += " (a configuration with a fully masked query row)"
                    if status != "pass":
                        why[f"{example.op}|{original.name}|{column}"].setdefault(status, label)

        run()
    return {
        "runtimes": {rt.name: str(rt.version()) for rt in matrix},
        "ops": {
            op: {
                rt: {
                    col: {"counts": dict(sorted(c.items())), "why": why.get(f"{op}|{rt}|{col}", {})}
                    for col, c in per.items()
                }
                for rt, per in sorted(per_rt.items())
            }
            for op, per_rt in sorted(cells.items())
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m conformance.lowered", description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=40, help="configurations per op (default 40)")
    parser.add_argument("--out", type=Path, default=LOWERED_JSON)
    args = parser.parse_args(argv)
    data = collect(args.examples, harness.runtimes())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
