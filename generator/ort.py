"""onnxruntime sessions configured the same way everywhere (verifier, docs, benchmarks)."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import onnxruntime as ort

from generator.errors import UsageError

# onnxruntime's log severities (SessionOptions.log_severity_level).
WARNING = 2
ERROR = 3

# Overrides every session's intra-op thread count. .ci/run's any-CPU pass sets it to 1, so
# onnxruntime sums in one order whatever the machine's core count.
THREADS_VARIABLE = "ONNX_GENAI_ORT_THREADS"


def intra_op_threads(default: int) -> int:
    """``default``, unless ``ONNX_GENAI_ORT_THREADS`` names another count."""
    value = os.environ.get(THREADS_VARIABLE, "")
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise UsageError(f"{THREADS_VARIABLE}={value!r}; valid: a positive number of threads, or unset")
    return int(value)


def session(
    model: onnx.ModelProto | bytes | Path | str,
    *,
    threads: int = 2,
    log_severity: int = WARNING,
    external_data: Path | None = None,
    spinning: bool = False,
) -> ort.InferenceSession:
    """A CPU session with thread-pool spinning off, on ``threads`` intra-op threads (or
    ``ONNX_GENAI_ORT_THREADS``).

    On a 2-core machine an idle spinning pool steals the second core from whatever
    runs next, so side-by-side timings would be meaningless with it on.

    onnxruntime's warnings stay on by default: one of them, TensorScatter's "in-place
    optimization not activated, copying past_cache to present_cache", is what the KV-cache
    proposal is about. A caller that runs such a graph with a plain ``run()`` on purpose
    (a copying baseline, a check of values only) passes ``log_severity=ERROR`` and says why.

    ``spinning=True`` lets idle pool threads spin between ops instead of sleeping: only for
    a measurement of what that waiting costs, with nothing else meant to run beside it.

    ``external_data`` is the folder a model's external-data locations are relative to, for a
    model read without its weights (``ModelFolder.read`` of an exported checkpoint): onnxruntime
    then reads the weights from there instead of a second copy in memory.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads(threads)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = log_severity
    if external_data is not None:  # a model in memory whose weights stay in its folder's data file
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_data))
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
