"""onnxruntime sessions configured the same way everywhere (verifier, docs, benchmarks)."""

from __future__ import annotations

from pathlib import Path

import onnx
import onnxruntime as ort

# onnxruntime's log severities (SessionOptions.log_severity_level).
WARNING = 2
ERROR = 3


def session(
    model: onnx.ModelProto | bytes | Path | str,
    *,
    threads: int = 2,
    log_severity: int = WARNING,
    external_data: Path | None = None,
) -> ort.InferenceSession:
    """A CPU session with thread-pool spinning off.

    On a 2-core machine an idle spinning pool steals the second core from whatever
    runs next, so side-by-side timings would be meaningless with it on.

    onnxruntime's warnings stay on by default: one of them, TensorScatter's "in-place
    optimization not activated, copying past_cache to present_cache", is what the KV-cache
    proposal is about. A caller that runs such a graph with a plain ``run()`` on purpose
    (a copying baseline, a check of values only) passes ``log_severity=ERROR`` and says why.

    ``external_data`` is the folder a model's external-data locations are relative to, for a
    model read without its weights (``ModelFolder.read`` of an exported checkpoint): onnxruntime
    then reads the weights from there instead of a second copy in memory.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = log_severity
    if external_data is not None:  # a model in memory whose weights stay in its folder's data file
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(external_data))
    if isinstance(model, onnx.ModelProto):
        model = model.SerializeToString()
    elif isinstance(model, Path):
        model = str(model)
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
