"""Case registry: a zoo case is one decorated function in ``proposals/<topic>/cases.py``.

The function builds a model, computes its expected outputs with an independent
reference and returns a :class:`Case`. Discovery imports every ``cases`` module
under ``proposals/``; no central list is edited.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import onnx

from generator.errors import UsageError


@dataclass(frozen=True)
class DataSet:
    """One ``test_data_set_N``: graph inputs and expected graph outputs, by name."""

    inputs: Mapping[str, np.ndarray]
    outputs: Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    """What a case function returns.

    ``datasets`` are written as ``test_data_set_0``, ``test_data_set_1``, ... and
    run in order (a prefill followed by a decode step, for example).
    ``divergences`` maps a runtime name to the reason it is known to disagree
    with the reference; the verifier then records, rather than fails, a mismatch.
    ``files`` are extra artefacts written beside ``model.onnx`` (a tokenizer, a
    pipeline config), by relative path.
    """

    model: onnx.ModelProto
    datasets: Sequence[DataSet]
    rtol: float = 1e-5
    atol: float = 1e-6
    divergences: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class CaseSpec:
    """A registered case function and where it came from."""

    topic: str
    name: str
    description: str
    build: Callable[[], Case]

    @property
    def id(self) -> str:
        return f"{self.topic}/{self.name}"

    @property
    def qualname(self) -> str:
        return f"{self.build.__module__}.{self.build.__qualname__}"

    @property
    def source(self) -> str:
        return inspect.getsource(self.build)


_REGISTRY: dict[str, CaseSpec] = {}


def _topic_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 3 or parts[0] != "proposals":
        raise UsageError(f"@case functions live in proposals/<topic>/cases.py, not in {module}")
    return parts[1]


def case(fn: Callable[[], Case]) -> Callable[[], Case]:
    """Register ``fn`` as a zoo case; its name is the case name, its docstring's first
    line the description."""
    doc = inspect.getdoc(fn)
    if not doc:
        raise UsageError(f"case {fn.__qualname__} needs a one-line docstring (its description)")
    spec = CaseSpec(_topic_of(fn.__module__), fn.__name__, doc.splitlines()[0], fn)
    previous = _REGISTRY.get(spec.id)
    if previous is not None and previous.qualname != spec.qualname:
        raise UsageError(f"case {spec.id} is defined twice: {previous.qualname}, {spec.qualname}")
    _REGISTRY[spec.id] = spec
    return fn


@cache
def discover() -> dict[str, CaseSpec]:
    """Import every ``proposals.<topic>.cases`` module and return the cases by id."""
    for topic in topics():
        try:
            importlib.import_module(f"proposals.{topic}.cases")
        except ModuleNotFoundError as err:
            if err.name != f"proposals.{topic}.cases":
                raise
    return dict(sorted(_REGISTRY.items()))


def match_ids(ids: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The ``topic/case`` ids matching ``patterns`` (``topic``, ``topic/case`` or ``case``),
    sorted; all if empty. An unmatched pattern is a one-line error."""
    ids = sorted(ids)
    if not patterns:
        return ids

    def hits(pattern: str) -> list[str]:
        return [cid for cid in ids if pattern in (cid, *cid.split("/", 1))]

    for pattern in patterns:
        if not hits(pattern):
            topics = sorted({cid.split("/", 1)[0] for cid in ids})
            raise UsageError(
                f"unknown case {pattern!r}; valid: a topic ({', '.join(topics)}), "
                "a case name or topic/case (see `python -m generator list`)"
            )
    return sorted({cid for pattern in patterns for cid in hits(pattern)})


def select(patterns: Sequence[str] = ()) -> list[CaseSpec]:
    """Registered cases matching ``patterns``; all if empty."""
    cases = discover()
    return [cases[cid] for cid in match_ids(cases, patterns)]


def topics() -> list[str]:
    """Every proposal folder (a package under ``proposals/``), sorted."""
    import proposals

    return sorted(info.name for info in pkgutil.iter_modules(proposals.__path__) if info.ispkg)
