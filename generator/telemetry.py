"""The engines' telemetry, turned off for this process before any engine is imported.

Every engine that offers an opt-out gets it (docs/runtimes.md lists what each one writes):

- onnxruntime (>= 1.29 on Linux) and onnxruntime-genai start a 1DS uploader that keeps a
  device id and an event queue in ``~/.cache/Microsoft/DeveloperTools/.onnxruntime/``;
  ``ORT_DISABLE_TELEMETRY=1`` stops it, and it must be set before onnxruntime is imported;
  ``onnxruntime.disable_telemetry_events()`` covers a process that imported it first.
- OpenVINO's ``import openvino`` starts ``openvino_telemetry`` (Google Analytics), which writes a
  client id (``~/intel/openvino_ga_cid``) and usage counts (``~/intel/stats``) unless consent is
  declined. Its opt-outs are ``opt_in_out --opt_out`` (a consent file in ``~/intel``, which
  writes to $HOME itself) and, for the OpenVINO tools, a CI environment (``CI=true``); in
  process, the library's own consent check answers "declined", as the consent file would.
"""

from __future__ import annotations

import os
import sys


def disable() -> None:
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"  # read by onnxruntime and onnxruntime-genai at import
    if "onnxruntime" in sys.modules:
        sys.modules["onnxruntime"].disable_telemetry_events()
    _decline_openvino()


def _decline_openvino() -> None:
    try:
        from openvino_telemetry.utils.opt_in_checker import ConsentCheckResult, OptInChecker
    except ImportError:  # OpenVINO not installed, or a telemetry library without this check
        return
    OptInChecker.check = lambda self, *args, **kwargs: ConsentCheckResult.DECLINED
    if "openvino_telemetry.main" in sys.modules:  # already initialised: turn its consent off too
        telemetry = sys.modules["openvino_telemetry.main"].Telemetry
        instance = getattr(telemetry, "_SingletonMetaClass__single_instance", None)
        if instance is not None:
            instance.consent = False
