"""Run one drawn :class:`~conformance.examples.Example` on every runtime and classify each cell.

- ``pass``: within tolerance of the float64 reference;
- ``divergence``: a mismatch or error that the divergence table explains (with a repro);
- ``unsupported``: the runtime refused the model at load time (its own one-line reason);
- ``mismatch`` / ``error``: unexplained, so the property test fails and hypothesis shrinks it.

Two caches keep the run short without hiding a cell: an outcome is computed once per
runtime and model (hypothesis replays examples while it shrinks), and when an engine says
that its refusal covers the whole op (``refuses_whole_op``: no importer for the op at all),
the remaining configurations of that op are recorded as unsupported with that same reason
instead of being compiled again; the results list these probed refusals.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from conformance.divergences import Divergence, find
from conformance.engines import clean
from conformance.examples import Example
from generator.runtimes import Runtime, available
from generator.verify import compare, first_line, installed

RESULTS_JSON = Path(__file__).resolve().parent / "results" / "fuzz.json"


@dataclass(frozen=True)
class Outcome:
    status: str  # pass | divergence | unsupported | mismatch | error
    detail: str = ""
    divergence: Divergence | None = None

    @property
    def failed(self) -> bool:
        return self.status in ("mismatch", "error")


#: (runtime, model digest) -> outcome; (runtime, "Op-opset") -> the whole-op refusal reason.
_OUTCOMES: dict[tuple[str, str], Outcome] = {}
_REFUSED: dict[tuple[str, str], str] = {}


def whole_op_refusal(runtime: Runtime, op: str, reason: str) -> bool:
    """Whether ``runtime`` declares ``reason`` a refusal of every configuration of ``op``."""
    refuses = getattr(runtime, "refuses_whole_op", None)
    return bool(refuses and refuses(op, reason))


def run_cached(runtime: Runtime, example: Example) -> Outcome:
    """:func:`run_one`, once per runtime and model; after a whole-op refusal, that refusal."""
    refused = _REFUSED.get((runtime.name, example.label))
    if refused is not None:
        return Outcome("unsupported", refused)
    key = (runtime.name, example_digest(example))
    if key not in _OUTCOMES:
        outcome = run_one(runtime, example)
        if outcome.status == "unsupported" and whole_op_refusal(runtime, example.op, outcome.detail):
            _REFUSED[(runtime.name, example.label)] = outcome.detail
        _OUTCOMES[key] = outcome
    return _OUTCOMES[key]


def runtimes() -> list[Runtime]:
    """The matrix's runtimes: the built-in ones, then the engines pyproject.toml configures
    (loaded through the same ``module:Class`` path as ``--runtime``), less those whose engine
    is not installed here (``verify`` skips their columns the same way)."""
    present, _ = installed(available())
    return [runtime for runtime, _ in present]


def run_one(runtime: Runtime, example: Example) -> Outcome:
    names = (runtime.name, *runtime.shares_divergences_with)
    try:
        runner = runtime.load_model(example.model)
    except Exception as err:  # noqa: BLE001 - refusing a model is data, not a failure
        return Outcome("unsupported", clean(first_line(err)))
    known = find(example, names)
    try:
        actual = runner(dict(example.inputs))
    except Exception as err:  # noqa: BLE001
        detail = clean(first_line(err))
        return Outcome("divergence", detail, known) if known else Outcome("error", detail)
    close, _, problem = compare(actual, example.expected, example.rtol, example.atol)
    if close:
        return Outcome("pass")
    return Outcome("divergence", problem, known) if known else Outcome("mismatch", problem)


class Results:
    """Counts per op x feature x runtime x status, deduplicated over hypothesis' re-runs."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.configs: dict[str, int] = defaultdict(int)
        self.cells: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(int))))
        self.reasons: dict = defaultdict(dict)  # (op, runtime) -> status -> first reason / divergence slug
        self.versions: dict[str, str] = {}
        self.probed: dict[str, dict[str, str]] = defaultdict(dict)  # "Op-opset" -> runtime -> whole-op refusal

    def record(self, example: Example, outcomes: dict[str, Outcome]) -> None:
        key = example_digest(example)
        if key in self.seen:
            return
        self.seen.add(key)
        self.configs[example.op] += 1
        for runtime, outcome in outcomes.items():
            for feature in ("all", *example.features):
                self.cells[example.op][feature][runtime][outcome.status] += 1
                cell = self.reasons[f"{example.op}|{feature}|{runtime}"]
                label = outcome.divergence.slug if outcome.divergence else outcome.detail
                if outcome.status != "pass" and outcome.status not in cell:
                    cell[outcome.status] = label

    def as_json(self) -> dict:
        ops = {}
        for op, features in sorted(self.cells.items()):
            ops[op] = {"configurations": self.configs[op], "features": {}}
            for feature, per_runtime in sorted(features.items()):
                ops[op]["features"][feature] = {
                    runtime: {"counts": dict(sorted(counts.items())), "why": self.reasons[f"{op}|{feature}|{runtime}"]}
                    for runtime, counts in sorted(per_runtime.items())
                }
        probed = {op: dict(sorted(per.items())) for op, per in sorted(self.probed.items())}
        return {"runtimes": dict(sorted(self.versions.items())), "ops": ops, "whole_op_refusals": probed}

    def write(self, path: Path = RESULTS_JSON) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.as_json(), indent=1, sort_keys=True) + "\n")
        return path


def check(example: Example, matrix: Sequence[Runtime], results: Results | None = None) -> list[str]:
    """Run ``example`` everywhere; return one line per unexplained mismatch or error."""
    outcomes = {rt.name: run_cached(rt, example) for rt in matrix}
    if results is not None:
        for rt in matrix:
            results.versions.setdefault(rt.name, str(rt.version()))
            if (rt.name, example.label) in _REFUSED:
                results.probed[example.label][rt.name] = _REFUSED[(rt.name, example.label)]
        results.record(example, outcomes)
    return [f"{example.label} on {name}: {o.status}: {o.detail}" for name, o in outcomes.items() if o.failed]


def example_digest(example: Example) -> str:
    h = hashlib.sha256(example.model.SerializeToString())
    for name in sorted(example.inputs):
        h.update(name.encode())
        h.update(example.inputs[name].tobytes())
    return h.hexdigest()
