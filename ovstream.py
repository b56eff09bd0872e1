"""ovstream: streaming inference on OpenVINO, as a Python library.

::

    import ovstream

    with ovstream.Pipeline(source="data/samples", model="face", output="runs/api") as pipe:
        for result in pipe:
            for det in result.detections or ():
                print(result.stream, result.frame_id, det.label, det.score, det.box)
        print(pipe.stats().totals.avg_fps)

The implementation lives in the ``engine`` package (:mod:`engine.api.pipeline`, :mod:`engine.core.results`);
this module is its public face. The ``ovstream`` command is :func:`engine.cli.main`.
"""
from __future__ import annotations

from engine.api.pipeline import Pipeline, build_config
from engine.config import RunConfig, SourceConfig, load_config
from engine.core.errors import ConfigError, DeviceError, ModelError, OutputError, OvstreamError, PipelineError
from engine.core.results import Classification, Detection, Event, FrameResult, read_events, read_results
from engine.observe.metrics import Snapshot, StreamRow

__all__ = [
    "Pipeline", "build_config", "FrameResult", "Detection", "Classification", "read_results", "Event", "read_events",
    "Snapshot", "StreamRow", "RunConfig", "SourceConfig", "load_config",
    "OvstreamError", "ConfigError", "ModelError", "DeviceError", "OutputError", "PipelineError",
]
