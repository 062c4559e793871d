"""A runtime seen through the compatibility lowering (:mod:`conformance.lowering`).

``LoweredRuntime`` rewrites TensorScatter and Attention into older standard ops, then
hands the model to the runtime it wraps. Its column shows which cells the lowering turns
from unsupported into passes. ``lowered(cls)`` makes a plug-in class of it for any runtime
class (``<name>-lowered``), creatable without arguments as the plug-in interface requires.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import onnx

from conformance.lowering import lower
from generator.runtimes import OpenVinoRuntime, Runner, Runtime


class LoweredRuntime(Runtime):
    """Lower, then delegate to ``base``."""

    base_class: type[Runtime]

    def __init__(self, base: Runtime | None = None) -> None:
        self.base = base if base is not None else self.base_class()
        self.name = f"{self.base.name}-lowered"

    def version(self) -> str:
        return self.base.version()

    def load(self, model_path: Path) -> Runner:
        model = lower(onnx.load(str(model_path)))
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "model.onnx"
            onnx.save(model, str(path))
            if isinstance(self.base, OpenVinoRuntime):
                return _openvino_by_output_name(self.base, path, [o.name for o in model.graph.output])
            return self.base.load(path)


def _openvino_by_output_name(base: OpenVinoRuntime, path: Path, names: list[str]) -> Runner:
    """OpenVINO's adapter, except that each output is found by the model's output name.

    OpenVINO folds the body's constant ``Where`` nodes and gives the surviving tensor every
    name it had, so ``get_any_name()`` may return an internal name instead of the output's.
    """
    import numpy as np
    import openvino as ov

    core = ov.Core()
    source = base.prepare(path)
    model = core.read_model(source, b"") if isinstance(source, bytes) else core.read_model(source)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    by_name = {next(n for n in names if n in o.get_names()): o for o in compiled.outputs}

    def run(inputs):
        results = compiled(dict(inputs))
        return {name: np.asarray(results[o]) for name, o in by_name.items()}

    return run


def lowered(cls: type[Runtime]) -> type[LoweredRuntime]:
    """A ``LoweredRuntime`` subclass wrapping ``cls``, named ``<cls.name>-lowered``."""
    return type(f"Lowered{cls.__name__}", (LoweredRuntime,), {"base_class": cls, "name": f"{cls.name}-lowered"})
