"""Extra runtime engines, each one :class:`generator.runtimes.Runtime` subclass.

They join the matrix the way any backend team's adapter would, through the public
plug-in interface: ``python -m generator verify --runtime conformance.engines.tract:TractRuntime``
(or the ``onnx_genai_proposals.runtimes`` entry point of an installed package).
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import sys
import tempfile
from collections.abc import Iterator

import onnx

# The engines join the matrix through pyproject.toml's [tool.onnx-genai-proposals] runtimes,
# which generator.runtimes.available() reads; that list is their one registration.

_TEMP_PATH = re.compile(r"(/[\w.\-]+)+/(model\.\w+)")


def clean(message: str) -> str:
    """An engine's message without the temporary folder it ran in (so results are stable)."""
    return _TEMP_PATH.sub(r"\2", message)


def io_names(model_path) -> tuple[list[str], list[str]]:
    """Graph input names (initializers excluded) and output names, in graph order."""
    graph = onnx.load(str(model_path), load_external_data=False).graph
    constants = {t.name for t in graph.initializer}
    return [i.name for i in graph.input if i.name not in constants], [o.name for o in graph.output]


@contextlib.contextmanager
def native_log_captured() -> Iterator[list[str]]:
    """Collect what native code writes to file descriptor 2 during the block (TVM's C++
    logger prints warnings there, which would break the verifier's one-line errors); the
    lines are handed back for callers that want them."""
    lines: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as buffer:
        os.dup2(buffer.fileno(), 2)
        try:
            yield lines
            gc.collect()  # native objects destroyed late log then; keep that inside too
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            buffer.seek(0)
            lines.extend(buffer.read().decode(errors="replace").splitlines())
