"""Mutation test of the references: each mutant breaks one rule of a spec text (a sign, a
mask, an offset, a wrap), and the tests that check that reference independently of itself
(onnx.reference, the loop reference, onnxruntime) catch every one.

mutmut 3.8.1 was the ecosystem tool considered: it generates every mutant of every function
and reruns the whole pytest suite for each one (every run importing torch and onnxruntime),
hours on two cores. Here each mutant is one named rule, applied to the reference module's
source, and only the checks of that reference run against it, in this process.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutant:
    module: str
    old: str  # must occur exactly once in the module's source
    new: str
    rule: str  # what the mutant breaks


KV = "proposals.kv_cache.reference"
QA = "proposals.quantized_attention.reference"
MUTANTS = [
    Mutant(KV, "kk) * scale", "kk) * -scale", "Attention: the sign of the scores"),
    Mutant(KV, "allowed &= np.broadcast_to(mask, allowed.shape)", "pass", "Attention: the boolean mask dropped"),
    Mutant(KV, "bias = bias + np.broadcast_to(", "bias = 0 * np.broadcast_to(", "Attention: the float mask dropped"),
    Mutant(
        KV,
        "        allowed &= key <= pos\n",
        "        allowed &= key < pos\n",
        "Attention: causal excludes the diagonal",
    ),
    Mutant(
        KV,
        "offset = np.asarray(nonpad_kv_seqlen) - q_len",
        "offset = 0 * np.asarray(nonpad_kv_seqlen)",
        "Attention: causal top-left with nonpad_kv_seqlen (errata onnx#8068)",
    ),
    Mutant(
        KV,
        "allowed &= key < np.asarray(nonpad_kv_seqlen)",
        "allowed &= key <= np.asarray(nonpad_kv_seqlen)",
        "Attention: one padded key more",
    ),
    Mutant(
        KV,
        "allowed &= key >= pos - left_window_size",
        "allowed &= key > pos - left_window_size",
        "Attention: the left window one key short",
    ),
    Mutant(KV, "softcap * np.tanh(raw / softcap) if softcap > 0 else raw", "raw", "Attention: softcap ignored"),
    Mutant(
        KV,
        "kk = np.repeat(k4.astype(np.float64), group, axis=1)",
        "kk = np.tile(k4.astype(np.float64), (1, group, 1, 1))",
        "Attention: GQA heads interleaved",
    ),
    Mutant(
        KV,
        "weights = np.where(empty, 0.0, weights / np.where(empty, 1.0, weights.sum(axis=-1, keepdims=True)))",
        "weights = weights / weights.sum(axis=-1, keepdims=True)",
        "Attention: a fully-masked row is NaN",
    ),
    Mutant(
        KV,
        "slots = starts[:, None] + np.arange(seq)[None, :]",
        "slots = starts[:, None] + np.arange(seq)[None, :] + 1",
        "TensorScatter: one slot late",
    ),
    Mutant(
        KV,
        '    if mode == "circular":\n        slots = slots % max_len',
        '    if mode == "circular":\n        slots = slots % (max_len * batch)',
        "TensorScatter: circular wraps over the batch too (the 1.19 text)",
    ),
    Mutant(KV, "x1 * cos - x2 * sin", "x1 * cos + x2 * sin", "RotaryEmbedding: the rotation's sign"),
    Mutant(
        "proposals.paged_attention.reference",
        "min(k.shape[0], offset + i + 1)",
        "min(k.shape[0], offset + i)",
        "loop attention: causal excludes the diagonal",
    ),
    Mutant(
        "proposals.paged_attention.reference",
        "out[slot // block_size, slot % block_size] = tokens[t]",
        "out[slot % cache.shape[0], slot // cache.shape[0]] = tokens[t]",
        "PagedAttention: slots read block-major",
    ),
    Mutant(
        "proposals.moe.reference",
        "weights = weights / weights.sum()",
        "weights = weights",
        "MoE: routing weights not normalised",
    ),
    Mutant(
        QA,
        "codes = np.rint(ratio.astype(np.float64))",
        "codes = np.floor(ratio.astype(np.float64) + 0.5)",
        "QuantizeLinear: ties round up, not to even",
    ),
    Mutant(
        QA,
        "values = values - np.asarray(zero_point)",
        "values = values + np.asarray(zero_point)",
        "DequantizeLinear: the zero point's sign",
    ),
]


def _load(rel: str) -> types.ModuleType:
    """A test module by path (the proposals' test folders are not packages)."""
    name = "mutation_catcher_" + rel.replace("/", "_").removesuffix(".py")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / rel)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def _calls(rel: str, test: str, params: Iterable = ((),)) -> list[Callable[[], None]]:
    return [lambda p=p: getattr(_load(rel), test)(*p) for p in params]


KV_TESTS = "proposals/kv_cache/tests/test_reference.py"
LOOP_TEST = "conformance/tests/test_reference.py"
# The independent checks of each reference module, cheapest first.
CATCHERS: dict[str, Callable[[], list[Callable[[], None]]]] = {
    KV: lambda: [
        *_calls(KV_TESTS, "test_fully_masked_row_is_zero"),
        *_calls(KV_TESTS, "test_tensor_scatter_circular_wraps_only_the_sequence_index"),
        *_calls(LOOP_TEST, "test_attention_matches_the_loop_reference", ((s,) for s in range(120))),
        *_calls(KV_TESTS, "test_tensor_scatter_matches_onnx_reference", ((s,) for s in range(40))),
        *_calls(KV_TESTS, "test_rotary_embedding_matches_onnx_reference", ((s,) for s in range(20))),
        *_calls(KV_TESTS, "test_attention_matches_onnx_reference", ((s,) for s in range(60))),
    ],
    "proposals.paged_attention.reference": lambda: [
        *_calls(
            "proposals/paged_attention/tests/test_docs.py",
            "test_paging_example_shares_a_prefix_block_and_traces_a_slot",
        ),
        *_calls(LOOP_TEST, "test_attention_matches_the_loop_reference", ((s,) for s in range(120))),
    ],
    "proposals.moe.reference": lambda: _calls(
        "proposals/moe/tests/test_bench.py", "test_every_variant_matches_the_reference"
    ),
    QA: lambda: _calls(
        "proposals/quantized_attention/tests/test_reference.py",
        "test_reference_matches_onnx_quantize_and_dequantize",
        (
            (dtype, runtime)
            for dtype in ("int8", "uint8", "int4", "float8e4m3fn")
            for runtime in ("reference", "onnxruntime")
        ),
    ),
}


def _mutated(mutant: Mutant, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The reference module executed from its mutated source."""
    module = importlib.import_module(mutant.module)
    source = inspect.getsource(module)
    assert source.count(mutant.old) == 1, (
        f"{mutant.rule}: {mutant.old!r} is not once in {mutant.module}; update the mutant"
    )
    copy = types.ModuleType(mutant.module)
    copy.__file__ = module.__file__
    monkeypatch.setitem(sys.modules, mutant.module, copy)  # dataclasses look their module up
    exec(compile(source.replace(mutant.old, mutant.new), module.__file__, "exec"), copy.__dict__)
    monkeypatch.setitem(sys.modules, mutant.module, module)
    return copy


def _install(original: types.ModuleType, mutant: types.ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every name bound to one of the original module's functions, in every loaded module
    (``from reference import attention`` included), now names the mutant's function."""
    replacements = {
        id(value): getattr(mutant, name)
        for name, value in vars(original).items()
        if inspect.isfunction(value) and value.__module__ == original.__name__
    }
    for module in list(sys.modules.values()):
        for name, value in list(getattr(module, "__dict__", {}).items()):
            if id(value) in replacements and inspect.isfunction(value):
                monkeypatch.setattr(module, name, replacements[id(value)])


def _first_failure(checks: list[Callable[[], None]]) -> str | None:
    for check in checks:
        try:
            check()
        except Exception as err:  # noqa: BLE001 (a crash is the suite catching the mutant too)
            return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the NaN mutant's
@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.rule)
def test_the_suite_catches_the_mutant(mutant: Mutant, monkeypatch: pytest.MonkeyPatch) -> None:
    checks = CATCHERS[mutant.module]()
    assert _first_failure(checks) is None  # the unmutated reference passes them
    _install(importlib.import_module(mutant.module), _mutated(mutant, monkeypatch), monkeypatch)
    assert _first_failure(checks) is not None, f"no check catches: {mutant.rule}"


def test_an_equivalent_mutant_is_not_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The control: the same machinery with a change that keeps the semantics passes every check."""
    same = Mutant(KV, "kk) * scale", "kk) * (scale * 1)", "Attention: scale times one")
    _install(importlib.import_module(KV), _mutated(same, monkeypatch), monkeypatch)
    assert _first_failure(CATCHERS[KV]()) is None
