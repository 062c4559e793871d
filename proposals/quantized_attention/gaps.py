"""Minimal repros of the runtime gaps the quantized-cache zoo cases hit.

``python -m proposals.quantized_attention.gaps`` writes each model to ``repro/`` and
prints what onnx's ReferenceEvaluator and onnxruntime do with it. The tests rebuild the
models and check both that the committed files are current and that each gap still
reproduces (so an upgrade that closes one shows up as a failing test to update).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator
from onnxscript import GraphBuilder

from generator.onnx_build import builder_model, graph_builder
from generator.ort import session
from generator.verify import first_line

REPRO = Path(__file__).resolve().parent / "repro"
F32, I64 = ir.DataType.FLOAT, ir.DataType.INT64


def _output(b: GraphBuilder, value: ir.Value, name: str, dtype: ir.DataType, dims: list[int]) -> None:
    value.type, value.shape = ir.TensorType(dtype), ir.Shape(dims)
    b.add_output(value, name)


# --8<-- [start:scatter_gap]
def scatter_codes_model(dtype: ir.DataType) -> onnx.ModelProto:
    """TensorScatter-24 alone on a [1, 1, 4, 2] cache of ``dtype`` codes (int4, float8e4m3fn)."""
    b = graph_builder(f"tensor_scatter_{dtype.name.lower()}", {"": 24})
    past, update = b.input("past", dtype, [1, 1, 4, 2]), b.input("update", dtype, [1, 1, 1, 2])
    write = b.input("write_indices", I64, [1])
    _output(b, b.op.TensorScatter(past, update, write, axis=2), "present", dtype, [1, 1, 4, 2])
    return builder_model(b)


# --8<-- [end:scatter_gap]


# --8<-- [start:batch_scale_gap]
def batch_shared_scale_model() -> onnx.ModelProto:
    """Blocked DequantizeLinear of a [2, 1, 4, 2] int8 cache with a batch-shared [1, 1, 1, 2] scale.

    The scale broadcasts over the batch and has one block over the 4 tokens: strict
    shape inference accepts it, but the rule "scale matches the input except on the
    blocked axis" makes runtimes refuse it; an Expand to [2, 1, 1, 2] fixes it.
    """
    b = graph_builder("dequantize_batch_shared_scale", {"": 24})
    codes = b.input("codes", ir.DataType.INT8, [2, 1, 4, 2])
    scale = b.initializer(ir.tensor(np.array([[[[0.5, 0.25]]]], np.float32)), "scale")
    _output(b, b.op.DequantizeLinear(codes, scale, axis=2, block_size=4), "y", F32, [2, 1, 4, 2])
    return builder_model(b)


# --8<-- [end:batch_scale_gap]


@dataclass(frozen=True)
class Gap:
    """One minimal model, its feeds, and the one-line outcome on each runtime."""

    file: str
    build: Callable[[], onnx.ModelProto]
    feeds: Callable[[], dict[str, np.ndarray]]


def _scatter_feeds(np_dtype) -> Callable[[], dict[str, np.ndarray]]:
    return lambda: {
        "past": np.zeros((1, 1, 4, 2), np_dtype),
        "update": np.array([[[[1, -2]]]], np.float32).astype(np_dtype),
        "write_indices": np.array([1], np.int64),
    }


GAPS = (
    Gap("tensor_scatter_int4.onnx", lambda: scatter_codes_model(ir.DataType.INT4), _scatter_feeds(ml_dtypes.int4)),
    Gap(
        "tensor_scatter_float8e4m3fn.onnx",
        lambda: scatter_codes_model(ir.DataType.FLOAT8E4M3FN),
        _scatter_feeds(ml_dtypes.float8_e4m3fn),
    ),
    Gap(
        "dequantize_batch_shared_scale.onnx",
        batch_shared_scale_model,
        lambda: {"codes": np.arange(16, dtype=np.int8).reshape(2, 1, 4, 2)},
    ),
)


def outcome(run: Callable[[], object]) -> str:
    """'ran' or the runtime's one-line error."""
    try:
        run()
    except Exception as err:  # noqa: BLE001 - the error text is the finding
        return first_line(err)
    return "ran"


def probe(gap: Gap) -> dict[str, str]:
    """What strict shape inference, the ReferenceEvaluator and onnxruntime make of the model."""
    model = gap.build()
    return {
        "shape_inference": outcome(lambda: onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)),
        "reference": outcome(lambda: ReferenceEvaluator(model).run(None, gap.feeds())),
        "onnxruntime": outcome(lambda: session(model).run(None, gap.feeds())),
    }


def write(folder: Path = REPRO) -> None:
    folder.mkdir(exist_ok=True)
    for gap in GAPS:
        (folder / gap.file).write_bytes(gap.build().SerializeToString(deterministic=True))


if __name__ == "__main__":
    write()
    for gap in GAPS:
        for where, result in probe(gap).items():
            sys.stdout.write(f"{gap.file:38} {where:16} {result}\n")
