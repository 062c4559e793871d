"""KV-cache formats: how a decoder stores its cache, chosen per pipeline (``--kv-cache``).

A format is a name and a rewrite of the decoder ``build_decoder`` wrote (float32
``past_*``/``present_*`` buffers) into one that stores its cache some other way. The
pipeline knows only ``float32`` (the decoder as built); every other format registers
itself here, as the backends register with ``factory.py``. The quantized-attention
proposal registers ``int8`` (its standard-op form Q -> TensorScatter -> DQ -> Attention).

That proposal imports this one (its accuracy study runs these decoders), so this module
never imports it: format modules are found by the project's one plug-in rule
(:mod:`generator.plugins`), from pyproject.toml's ``[tool.onnx-genai-proposals]
kv-cache-formats`` (the source tree runs uninstalled, so it cannot declare entry points for
itself) and from the ``onnx_genai_proposals.kv_cache_formats`` entry-point group (formats an
installed package adds). Importing one registers it.

The memory a format takes is read off the rewritten graph's cache inputs (their shapes and
element types), never typed: :func:`cache_buffers`, :func:`cache_bytes_per_token`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir

from generator.errors import UsageError
from generator.plugins import PluginKind, discovered

FLOAT32 = "float32"
KV_CACHE_FORMATS = PluginKind("kv-cache-formats", "onnx_genai_proposals.kv_cache_formats", "KV-cache format")


@dataclass(frozen=True)
class CacheFormat:
    name: str
    rewrite: Callable[[onnx.ModelProto], onnx.ModelProto]  # build_decoder's output -> this format's decoder
    description: str


_FORMATS: dict[str, CacheFormat] = {
    FLOAT32: CacheFormat(FLOAT32, lambda model: model, "float32 buffers, as build_decoder writes them"),
}


# --8<-- [start:registry]
def register_cache_format(name: str, rewrite: Callable[[onnx.ModelProto], onnx.ModelProto], description: str) -> None:
    """Add a format under ``name`` (a module does this when imported)."""
    known = _FORMATS.get(name)
    if known is not None and known.rewrite is not rewrite:
        raise UsageError(f"two KV-cache formats are named {name!r}: {known.rewrite} and {rewrite}")
    _FORMATS[name] = CacheFormat(name, rewrite, description)


def cache_format_names() -> list[str]:
    """Every format, float32 first."""
    discovered(KV_CACHE_FORMATS)
    return [FLOAT32, *sorted(set(_FORMATS) - {FLOAT32})]


def cache_format(name: str) -> CacheFormat:
    """The format named ``name``, or a one-line UsageError naming the valid ones."""
    discovered(KV_CACHE_FORMATS)
    if name not in _FORMATS:
        raise UsageError(f"unknown KV-cache format {name!r}; valid: {', '.join(cache_format_names())}")
    return _FORMATS[name]


def with_cache_format(decoder: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """``decoder`` (as ``build_decoder`` wrote it) storing its cache in format ``name``."""
    return cache_format(name).rewrite(decoder)


# --8<-- [end:registry]


@dataclass(frozen=True)
class CacheBuffer:
    """One cache input of a decoder: ``past_<name>`` (written back as ``present_<name>``)."""

    name: str
    dtype: ir.DataType
    dims: tuple[int | str, ...]  # [batch, kv_heads, length, last]; str for a symbolic dim

    @property
    def numpy_dtype(self) -> np.dtype:
        return self.dtype.numpy()

    @property
    def recurrent(self) -> bool:
        """A hybrid's conv or recurrent state (``past_conv_i``, ``past_state_i``): one per sequence."""
        return self.name.startswith(("conv_", "state_"))

    def bytes_per_token(self) -> float:
        """Bytes one token of one sequence takes in this buffer (bits / 8: int4 packs two per
        byte); a recurrent state's size does not grow with the tokens (0)."""
        if self.recurrent:
            return 0.0
        return math.prod(self.dims[1:2] + self.dims[3:]) * self.dtype.bitwidth / 8

    def shape(self, batch: int, length: int) -> tuple[int, ...]:
        """The buffer's shape for ``batch`` sequences of ``length`` slots (a fixed length wins;
        a recurrent state has fixed dims only)."""
        fixed = self.dims[2] if isinstance(self.dims[2], int) else length
        return (batch, self.dims[1], fixed, *self.dims[3:])


# --8<-- [start:buffers]
def cache_buffers(decoder: onnx.ModelProto) -> list[CacheBuffer]:
    """The decoder's cache inputs (``past_*``), in graph order, with their element types and dims."""
    buffers = []
    for value in decoder.graph.input:
        if not value.name.startswith("past_"):
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in tensor.shape.dim)
        buffers.append(CacheBuffer(value.name.removeprefix("past_"), ir.DataType(tensor.elem_type), dims))
    return buffers


def cache_bytes_per_token(decoder: onnx.ModelProto) -> float:
    """Bytes of cache one token of one sequence takes, over every layer, K and V (and scales)."""
    return sum(buffer.bytes_per_token() for buffer in cache_buffers(decoder))


def cache_bytes(decoder: onnx.ModelProto, context: int, batch: int = 1) -> int:
    """Bytes of every cache buffer allocated for ``batch`` sequences of ``context`` slots."""
    return round(
        sum(math.prod(buffer.shape(batch, context)) * buffer.dtype.bitwidth / 8 for buffer in cache_buffers(decoder))
    )


# --8<-- [end:buffers]
