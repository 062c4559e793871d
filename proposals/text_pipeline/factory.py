"""The backend and device factories: ``DeviceFactory`` and ``Text2TextPipelineFactory``.

A backend registers itself by name with a creator (model folder, device -> ``Pipeline``) and
a device enumerator, like the WG's factories. ``proposals.text_pipeline.backends`` holds the
built-in ones, each in its own module: onnxruntime, transformers, onnxruntime-genai,
openvino-genai and onnxruntime-paged. This module imports none of them: backend modules are
found by the project's one plug-in rule (:mod:`generator.plugins`), from pyproject.toml's
``[tool.onnx-genai-proposals] pipeline-backends`` and the ``onnx_genai_proposals.pipeline_backends``
entry points of installed packages, and importing one registers it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from generator.errors import UsageError
from generator.plugins import PluginKind, discovered
from proposals.text_pipeline.pipeline import Pipeline


@dataclass(frozen=True)
class Device:
    """``onnx::genai::Device``: an identifier and backend-specific settings."""

    identifier: str
    config: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Backend:
    name: str
    create: Callable[[Path, Device], Pipeline]
    enumerate: Callable[[], list[Device]]


_BACKENDS: dict[str, Backend] = {}
PIPELINE_BACKENDS = PluginKind("pipeline-backends", "onnx_genai_proposals.pipeline_backends", "pipeline backend")


# --8<-- [start:factory]
def register_backend(
    name: str, create: Callable[[Path, Device], Pipeline], enumerate_: Callable[[], list[Device]]
) -> None:
    """``DeviceFactory::Register`` + ``Text2TextPipelineFactory::Register`` in one call."""
    _BACKENDS[name] = Backend(name, create, enumerate_)


def backend_names() -> list[str]:
    """Every registered backend (the discovered modules register when imported)."""
    discovered(PIPELINE_BACKENDS)
    return sorted(_BACKENDS)


def enumerate_devices(backend: str) -> list[Device]:
    """``DeviceFactory::Enumerate``: the devices a backend can run on here."""
    return _backend(backend).enumerate()


def create_pipeline(backend: str, model_dir: str | Path, device: str | Device | None = None) -> Pipeline:
    """``Text2TextPipelineFactory::Create``: a pipeline for a model folder on a device
    (by identifier; the backend's first device when None). A ``Device`` passed with a
    config overrides the settings that device declares (e.g. ``{"kv_cache": "int8"}``,
    ``{"moe": "substitute"}``)."""
    entry = _backend(backend)
    devices = entry.enumerate()
    if device is None:
        return entry.create(Path(model_dir), devices[0])
    wanted = device.identifier if isinstance(device, Device) else device
    matches = [d for d in devices if d.identifier == wanted]
    if not matches:
        valid = ", ".join(d.identifier for d in devices)
        raise UsageError(f"backend {backend!r} has no device {wanted!r}; valid: {valid}")
    chosen = matches[0]
    if isinstance(device, Device) and device.config:
        chosen = Device(chosen.identifier, {**chosen.config, **_settings(backend, chosen, device.config)})
    return entry.create(Path(model_dir), chosen)


# --8<-- [end:factory]


def _backend(name: str) -> Backend:
    discovered(PIPELINE_BACKENDS)
    if name not in _BACKENDS:
        raise UsageError(f"unknown backend {name!r}; valid: {', '.join(backend_names())}")
    return _BACKENDS[name]


def _settings(backend: str, device: Device, wanted: Mapping[str, object]) -> Mapping[str, object]:
    """The settings a caller asks for, each one the device declares (a backend that does not
    declare ``kv_cache`` has no cache format to choose)."""
    unknown = sorted(set(wanted) - set(device.config))
    if unknown:
        valid = ", ".join(sorted(device.config)) or "none"
        raise UsageError(
            f"backend {backend!r} device {device.identifier!r} has no setting {unknown[0]!r}; its settings: {valid}"
        )
    return wanted
