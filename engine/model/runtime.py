"""OpenVINO's runtime for the processes of a run, without its model-conversion API.

``import openvino`` also imports ``openvino.tools.ovc`` (only for ``openvino.convert_model``), and
that import sends a telemetry event: it starts a process that loads the SSL certificates and tries
the network, writes ``~/intel/stats`` and is waited for at exit. Measured here: ``import
openvino`` 0.39 core-s and 0.5–0.9 s of wall, 0.17 core-s and 0.3 s without it, in the supervisor
and in every inference worker at every start. A run converts nothing, so the modules of a run
import OpenVINO through here; when it is the first import of OpenVINO in the process,
``openvino.tools.ovc`` is held back for it (``openvino`` skips a conversion API it cannot import)
and stays importable afterwards (``ovstream convert`` imports it explicitly).
"""
from __future__ import annotations

import sys

_CONVERSION_API = "openvino.tools.ovc"

if "openvino" not in sys.modules and _CONVERSION_API not in sys.modules:
    sys.modules[_CONVERSION_API] = None     # type: ignore[assignment]  # ImportError for this import only
    try:
        import openvino  # noqa: F401  (imported now, with the conversion API held back)
    finally:
        del sys.modules[_CONVERSION_API]

import openvino as ov  # noqa: E402

__all__ = ["ov"]
