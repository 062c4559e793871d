"""Apache TVM: the Relax ONNX frontend, compiled for the host CPU with LLVM, run on the Relax VM."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from conformance.engines import io_names, native_log_captured
from generator.runtimes import Runner, Runtime


class TvmRuntime(Runtime):
    """TVM Relax: ``from_onnx``, ``tvm.compile(target="llvm")``, ``relax.VirtualMachine``."""

    name = "tvm"

    def version(self) -> str:
        import tvm

        return tvm.__version__

    def load(self, model_path: Path) -> Runner:
        import tvm
        from tvm import relax
        from tvm.relax.frontend.onnx import from_onnx

        failure = None
        with native_log_captured():
            try:
                module = from_onnx(onnx.load(str(model_path)))
                machine = relax.VirtualMachine(tvm.compile(module, target="llvm"), tvm.cpu())
            except Exception as err:  # noqa: BLE001 - re-raised below, once its frames are freed
                # The traceback keeps the frontend's native objects alive; they log when freed.
                failure = err.with_traceback(None)
                failure.__context__ = failure.__cause__ = None
        if failure is not None:
            raise failure
        inputs, outputs = io_names(model_path)

        def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            result = machine["main"](*[tvm.runtime.tensor(np.ascontiguousarray(feeds[n])) for n in inputs])
            results = [result] if hasattr(result, "numpy") else list(result)
            return {name: r.numpy() for name, r in zip(outputs, results, strict=True)}

        return run

    def refuses_whole_op(self, op: str, reason: str) -> bool:
        """No converter for ``op``; for Attention, TVM 0.27 maps the name to the com.microsoft
        contrib converter, which reads the ``num_heads`` attribute the standard op does not have."""
        if f"not supported for frontend ONNX: {op}" in reason:
            return True
        return op == "Attention" and "KeyError: 'num_heads'" in reason
