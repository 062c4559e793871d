"""IREE: ``iree-import-onnx`` to MLIR, ``iree-compile`` for llvm-cpu, then the IREE runtime."""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from conformance.engines import clean, io_names
from generator.runtimes import Runner, Runtime

_ERROR = re.compile(r"error: (.*)")


class IreeRuntime(Runtime):
    """IREE 3.x on the local-sync CPU driver; code generated for a generic x86-64 CPU."""

    name = "iree"

    def version(self) -> str:
        from importlib.metadata import version

        return version("iree-base-compiler")

    def load(self, model_path: Path) -> Runner:
        import iree.compiler as compiler
        import iree.runtime as runtime

        with tempfile.TemporaryDirectory() as folder:
            mlir = Path(folder) / "model.mlir"
            imported = subprocess.run(
                [sys.executable, "-m", "iree.compiler.tools.import_onnx", str(model_path), "-o", str(mlir)],
                capture_output=True,
                text=True,
            )
            if imported.returncode:
                raise RuntimeError(clean("iree-import-onnx: " + _last_line(imported.stderr)))
            try:
                vmfb = compiler.compile_file(
                    str(mlir), target_backends=["llvm-cpu"], extra_args=["--iree-llvmcpu-target-cpu=generic"]
                )
            except compiler.CompilerToolError as err:
                raise RuntimeError(clean("iree-compile: " + _first_error(str(err)))) from None
        module = runtime.load_vm_flatbuffer(vmfb, driver="local-sync")
        function = getattr(module, onnx.load(str(model_path), load_external_data=False).graph.name)
        inputs, outputs = io_names(model_path)

        def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            results = function(*[np.ascontiguousarray(feeds[name]) for name in inputs])
            results = results if isinstance(results, (tuple, list)) else (results,)
            return {name: np.asarray(r.to_host()) for name, r in zip(outputs, results, strict=True)}

        return run

    def refuses_whole_op(self, op: str, reason: str) -> bool:
        """The importer left ``op`` as an opaque ``onnx.<op>`` operator, or its torch-mlir op
        (``torch.onnx.<snake_case>``) has no lowering in the compiler: no configuration compiles."""
        snake = re.sub(r"(?<!^)(?=[A-Z])", "_", op).lower()
        return "failed to legalize" in reason and (f"(onnx.{op})" in reason or f"'torch.onnx.{snake}'" in reason)


def _first_error(diagnostics: str) -> str:
    """The compiler's first ``error:`` line, which names the op it could not lower."""
    match = _ERROR.search(diagnostics)
    if not match:
        return _last_line(diagnostics)
    text = match.group(1)
    op = re.search(r'name = "([\w.]+)"', text)
    text = text.split(": %")[0]  # drop the MLIR of the operation (its shapes vary)
    return f"{text.split(':')[0]} ({op.group(1)})" if op else text[:200]


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:200] if lines else "failed"
