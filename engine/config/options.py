"""The config overrides that the options of ``ovstream run`` name (and the keywords of
:class:`engine.api.pipeline.Pipeline`, which mean the same): one mapping for both, light to import
(``ovstream run`` parses its options before it imports anything heavy; engine.config takes the
values the options offer from here).
"""
from __future__ import annotations

import argparse
from pathlib import Path

MODEL_SUFFIXES = (".xml", ".onnx", ".tflite", ".pb", ".pdmodel")
HINTS = ("THROUGHPUT", "LATENCY", "CUMULATIVE_THROUGHPUT", "NONE")     # [inference] hint


def overrides_from(args: argparse.Namespace) -> dict:
    """The config overrides named on the command line."""
    out: dict = {}

    def put(section: str, key: str, value: object) -> None:
        if value is not None:
            out.setdefault(section, {})[key] = value

    if args.source:
        out["sources"] = [{"uri": uri} for uri in args.source]   # globs expand when the config resolves
    put("source", "loop", args.loop)
    if args.model:
        is_file = Path(args.model).suffix in MODEL_SUFFIXES
        put("model", "path" if is_file else "name", args.model)
    put("model", "adapter", args.adapter)
    put("inference", "devices", args.device)
    put("inference", "nireq", args.nireq)
    put("inference", "batch", args.batch)
    put("inference", "streams", args.streams)
    put("inference", "hint", args.hint)
    put("pipeline", "decoders", args.decoders)
    put("output", "dir", args.output)
    if args.annotate:
        put("output", "images", True)
    if args.video:
        put("output", "video", True)
    if args.no_dashboard:
        put("dashboard", "enabled", False)
    put("metrics", "port", args.metrics_port)
    put("cluster", "address", args.cluster)
    return out
