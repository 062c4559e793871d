"""Differential conformance of the standard ops the GenAI proposals rest on.

Owns float64 references of standard ops (written from the onnx 1.23.2 spec text),
hypothesis strategies that draw single-node models of them, extra runtime engines
plugged in through :class:`generator.runtimes.Runtime`, the divergence table, the
upstream repros and the generated support page. It sits beside ``generator/`` (the
topic-agnostic spine) and may reuse references from ``proposals/``.
"""
