"""Runtime adapters: one small class per runtime, the columns of the conformance matrix.

A backend team adds its runtime without editing this project: subclass
:class:`Runtime`, then either pass ``--runtime package.module:ClassName`` to
``python -m generator verify`` or expose the class under the entry-point group
``onnx_genai_proposals.runtimes`` in its own package. The project's own engine adapters are
listed in pyproject.toml's ``[tool.onnx-genai-proposals] runtimes``; both are found by the
one plug-in rule of :mod:`generator.plugins`.
"""

from __future__ import annotations

import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx

from generator.errors import UsageError
from generator.plugins import Plugin, PluginKind, load, plugins

RUNTIMES = PluginKind("runtimes", "onnx_genai_proposals.runtimes", "runtime")
_RUNTIME_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]*")  # a matrix column and a baseline key

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


class Runtime(ABC):
    """A runtime under test.

    ``load`` prepares a model and returns a function from named inputs to named
    outputs. Any exception from ``load`` means *unsupported* (the first line of its
    message goes into the matrix); an exception from the returned function is a
    runtime error on a model the runtime accepted.
    """

    #: Column name in the matrix; also the key of ``Case.divergences``.
    name: str = ""
    #: Other runtimes whose recorded divergences apply here too (same engine, other setup).
    shares_divergences_with: tuple[str, ...] = ()

    @abstractmethod
    def version(self) -> str:
        """The runtime's version string, recorded in the matrix. Raise ImportError (import
        the engine here) when its package is not installed: ``verify`` then skips the column."""

    @abstractmethod
    def load(self, model_path: Path) -> Runner:
        """Prepare ``model_path`` for inference."""

    def load_model(self, model: onnx.ModelProto) -> Runner:
        """Prepare an in-memory model (docs and tests), through the same ``load``."""
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.onnx"
            onnx.save(model, str(path))
            return self.load(path)


# --8<-- [start:reference]
class ReferenceRuntime(Runtime):
    """onnx's Python reference evaluator: slow, but the spec's executable form."""

    name = "reference"

    def version(self) -> str:
        import onnx

        return onnx.__version__

    def load(self, model_path: Path) -> Runner:
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(str(model_path))

        def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            results = evaluator.run(None, dict(inputs))
            return dict(zip(evaluator.output_names, results, strict=True))

        return run


# --8<-- [end:reference]


class OnnxRuntime(Runtime):
    """onnxruntime, CPU execution provider."""

    name = "onnxruntime"

    def version(self) -> str:
        import onnxruntime

        return onnxruntime.__version__

    def load(self, model_path: Path) -> Runner:
        from generator.ort import ERROR, session

        # The matrix checks values: a plain run copies every TensorScatter cache by design, so
        # onnxruntime's copy warning would only repeat itself once per case.
        sess = session(model_path, log_severity=ERROR)
        names = [o.name for o in sess.get_outputs()]

        def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return dict(zip(names, sess.run(names, dict(inputs)), strict=True))

        return run


class OpenVinoRuntime(Runtime):
    """OpenVINO CPU plugin through its ONNX frontend, in f32 (no bf16 downcast)."""

    name = "openvino"

    def version(self) -> str:
        import openvino

        return openvino.__version__.split("-")[0]

    def prepare(self, model_path: Path) -> str | bytes:
        """What the ONNX frontend reads: the file as it is."""
        return str(model_path)

    def load(self, model_path: Path) -> Runner:
        import openvino as ov

        core = ov.Core()
        source = self.prepare(model_path)
        model = core.read_model(source, b"") if isinstance(source, bytes) else core.read_model(source)
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        # Outputs keep the graph's order; after constant folding get_any_name() may return an
        # internal tensor name, so the names come from the ONNX graph itself.
        names = [o.name for o in onnx.load(str(model_path), load_external_data=False).graph.output]
        outputs = list(compiled.outputs)

        def run(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            results = compiled(dict(inputs))
            return {name: _bf16_viewed(o, np.asarray(results[o])) for name, o in zip(names, outputs, strict=True)}

        return run


def _bf16_viewed(port, value: np.ndarray) -> np.ndarray:
    """OpenVINO's Python API hands a bf16 output back as float16-typed bf16 bits (numpy has no
    bfloat16); view them as ml_dtypes' bfloat16, the type onnx's numpy_helper uses."""
    import openvino as ov

    if port.get_element_type() != ov.Type.bf16:
        return value
    import ml_dtypes

    return value.view(ml_dtypes.bfloat16)


class OpenVinoInlinedRuntime(OpenVinoRuntime):
    """OpenVINO after ``onnx.inliner`` expands model-local functions.

    OpenVINO 2026.4's frontend has no rule for a call to a model-local function (the
    form in which this project ships proposed function ops). This column shows whether
    the function *bodies* run there, which is what a deployment would do first.
    """

    name = "openvino-inlined"
    shares_divergences_with = ("openvino",)

    def prepare(self, model_path: Path) -> str | bytes:
        import onnx
        import onnx.inliner

        model = onnx.load(str(model_path))
        if not model.functions:
            return str(model_path)
        return onnx.inliner.inline_local_functions(model).SerializeToString()


BUILTIN: tuple[type[Runtime], ...] = (ReferenceRuntime, OnnxRuntime, OpenVinoRuntime, OpenVinoInlinedRuntime)


def load_class(target: str, source: str = "--runtime") -> type[Runtime]:
    """Import ``module:Class`` and check it is a :class:`Runtime`."""
    module_name, _, class_name = target.partition(":")
    if not module_name or not class_name:
        raise UsageError(f"runtime {target!r}: expected module:ClassName, e.g. mypkg.rt:MyRuntime")
    cls = load(Plugin(target, source), RUNTIMES)
    if not (isinstance(cls, type) and issubclass(cls, Runtime)):
        raise UsageError(f"runtime {target!r}: not a generator.runtimes.Runtime subclass")
    check_class(cls, target)
    return cls


def check_class(cls: type[Runtime], target: str) -> None:
    """A runtime's ``name`` and ``shares_divergences_with`` must be usable as matrix keys."""
    if not (isinstance(cls.name, str) and _RUNTIME_NAME.fullmatch(cls.name)):
        raise UsageError(
            f"runtime {target!r}: name is {cls.name!r}; valid: a non-empty lowercase string of "
            "letters, digits, '_', '-' and '.' (the matrix column)"
        )
    shared = cls.shares_divergences_with
    if not (isinstance(shared, tuple) and all(isinstance(n, str) for n in shared)):
        raise UsageError(f"runtime {target!r}: shares_divergences_with must be a tuple of runtime names")


def configured(pyproject: Path | None = None) -> list[Plugin]:
    """The runtime plug-ins found by the project's one rule (:mod:`generator.plugins`):
    ``[tool.onnx-genai-proposals] runtimes`` in pyproject.toml (engines wrapped through the
    same public interface an outside team uses), then the ``onnx_genai_proposals.runtimes``
    entry points of installed packages."""
    return plugins(RUNTIMES, pyproject)


def available(extra: Sequence[str] = ()) -> list[Runtime]:
    """Built-in runtimes, the discovered plug-ins, then ``--runtime`` classes."""
    classes: list[type[Runtime]] = list(BUILTIN)
    classes.extend(load_class(plugin.target, plugin.source) for plugin in configured())
    classes.extend(load_class(target) for target in extra)
    seen: dict[str, type[Runtime]] = {}
    for cls in classes:
        if cls.name in seen and seen[cls.name] is not cls:
            raise UsageError(f"two runtimes are named {cls.name!r}: {seen[cls.name]} and {cls}")
        seen[cls.name] = cls
    return [_instantiate(cls) for cls in seen.values()]


def _instantiate(cls: type[Runtime]) -> Runtime:
    try:
        return cls()
    except Exception as err:  # noqa: BLE001 - plug-in code
        raise UsageError(
            f"runtime {cls.__module__}:{cls.__qualname__}: cannot be created without arguments "
            f"({type(err).__name__}: {err})"
        ) from None
