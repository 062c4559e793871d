"""tract (Sonos' Rust inference engine) through its Python wheel."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from conformance.engines import io_names
from generator.runtimes import Runner, Runtime


class TractRuntime(Runtime):
    """tract: load the ONNX file, type and optimise it, run on CPU."""

    name = "tract"

    def version(self) -> str:
        import tract

        return tract.version()

    def load(self, model_path: Path) -> Runner:
        import tract

        runnable = tract.onnx().load(str(model_path)).into_model().into_runnable()
        inputs, outputs = io_names(model_path)

        def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            results = runnable.run([np.ascontiguousarray(feeds[name]) for name in inputs])
            return {name: value.to_numpy() for name, value in zip(outputs, results, strict=True)}

        return run
