"""tract (Sonos' Rust inference engine) through its Python wheel."""

from __future__ import annotations

import re
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

        try:
            runnable = tract.onnx().load(str(model_path)).into_model().into_runnable()
        except tract.TractError as err:
            raise tract.TractError(error_chain(str(err))) from None
        inputs, outputs = io_names(model_path)

        def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            try:
                results = runnable.run([np.ascontiguousarray(feeds[name]) for name in inputs])
            except tract.TractError as err:
                raise tract.TractError(error_chain(str(err))) from None
            return {name: value.to_numpy() for name, value in zip(outputs, results, strict=True)}

        return run

    def refuses_whole_op(self, op: str, reason: str) -> bool:
        """tract has no translator at all for ``op`` (``Unimplemented(<op>)``)."""
        return f"Unimplemented({op})" in reason


_NODE_NUMBER = re.compile(r"node #\d+ ")


def error_chain(message: str) -> str:
    """tract's ``anyhow`` chain on one line: the outer context, then each ``Caused by`` entry.

    The stack backtrace is dropped, and so are node numbers (they depend on how the graph was
    numbered, not on what failed).
    """
    text = message.split("Stack backtrace:")[0]
    outer, _, causes = text.partition("Caused by:")
    parts = [outer.strip()] + [re.sub(r"^\s*\d+:\s*", "", line).strip() for line in causes.splitlines()]
    return _NODE_NUMBER.sub("node ", ": ".join(p for p in parts if p))
