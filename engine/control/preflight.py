"""Pre-flight: everything that can be wrong with a run, found before a process starts.

The devices and their properties, the model (read, prepared for the batch, kept in the model
cache for the inference workers to compile by path), its preprocessing and the adapter's view of
its outputs, and every file source: a mistake is one line now instead of a dead stage later.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2

from engine.config import LineConfig, RunConfig, ZoneConfig, check_classes
from engine.config.streams import is_live_uri
from engine.core.errors import ConfigError
from engine.io.sources import _existing, open_source
from engine.io.streams import is_live
from engine.model.adapters import create_adapter
from engine.model.cache import ModelCache, cache_root, writable
from engine.model.prepare import (
    AUTO_BATCH,
    LIVE_BATCH_STREAMS,
    InputInfo,
    check_devices,
    check_preprocess,
    check_properties,
    model_facts,
    preflight_compile,
    prepare_model,
    raw_properties,
    read_model,
)
from engine.model.runtime import ov


def preflight(cfg: RunConfig, streams_may_join: bool = False,
              local_sources_only: bool = False) -> tuple[InputInfo, int]:
    """Everything that can be wrong before a process starts: devices and their properties, model,
    preprocessing, adapter, sources. Returns the model's input and the frames per request
    (``batch = 0``: one when ``streams_may_join``, as a library pipeline's camera may).
    ``local_sources_only`` (a cluster driver): a file source not on this machine is left to the
    nodes to find."""
    core = ov.Core()
    check_classes(cfg.tracking, cfg.model.labels if isinstance(cfg.model.labels, list) else [])
    check_shapes_fit(cfg)
    check_devices(core, cfg.inference.devices)
    for device in cfg.inference.devices:
        check_properties(core, cfg.inference, device)
    root = writable(cache_root(cfg.inference.cache_dir))
    cache = ModelCache(root) if root is not None else None
    auto = cfg.inference.batch == 0
    batch = cfg.inference.batch or auto_batch(cfg, streams_may_join)
    hit = cache.lookup(cfg.model, batch) if cache is not None else None
    if hit is None and auto and batch > 1 and cache is not None:
        known = cache.lookup(cfg.model, 1)        # an earlier run found that the graph fixes its batch
        if known is not None and not known[1].get("batchable", True):
            hit, batch = known, 1
    model = None
    if hit is not None:       # checked and prepared by an earlier run: its facts, not a second read
        facts = hit[1]
    else:
        model = read_model(core, cfg.model.path)
        facts = model_facts(model, cfg.model)
        if auto and not facts["batchable"]:
            batch = 1
    info = InputInfo(**facts["input"])
    check_preprocess(info, cfg.model)
    create_adapter(cfg.model).check_outputs(facts["outputs"])
    if model is not None:
        prepared, _ = prepare_model(model, cfg.model, batch)   # e.g. a batch the graph cannot take: one line now
        if cache is not None:                                  # the inference workers compile it by path
            cache.store(cfg.model, batch, prepared, facts)
    for device in cfg.inference.devices:       # raw OpenVINO properties: tried in a real compile
        if raw_properties(cfg.inference, device):
            preflight_compile(core, cfg, device, batch)
    for src in cfg.streams:
        if not is_live_uri(src.uri) and not (local_sources_only and _existing(src.uri.strip()) is None):
            open_source(src).close()     # a missing or empty folder, a bad file type: one line now
    return info, batch


def check_shapes_fit(cfg: RunConfig) -> None:
    """A line or zone in pixel coordinates must lie within the frames of the video files it applies to
    (their size is known before the run; a camera's and a folder's images are not checked)."""
    if not cfg.tracking.enabled:
        return
    groups: tuple[tuple[str, Sequence[LineConfig | ZoneConfig]], ...] = (("lines", cfg.tracking.lines),
                                                                        ("zones", cfg.tracking.zones))
    shapes = [(kind, number, shape) for kind, group in groups for number, shape in enumerate(group, 1)
              if not shape.relative]
    for src in cfg.streams if shapes else ():
        if is_live_uri(src.uri) or not Path(src.uri).is_file():
            continue
        capture = cv2.VideoCapture(src.uri)
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        capture.release()
        for kind, number, shape in shapes:
            outside = next((p for p in shape.points if p[0] > width or p[1] > height), None)
            if width > 0 and shape.stream in ("", src.name) and outside is not None:
                raise ConfigError(f"[[tracking.{kind}]] #{number} {shape.name}: point {outside} is outside "
                                  f"stream {src.name!r}'s {width}x{height} frames (pixels; relative = true "
                                  f"takes fractions of the frame)")


def auto_batch(cfg: RunConfig, streams_may_join: bool = False) -> int:
    """Frames per request for ``batch = 0`` (before the graph is asked whether it takes them):
    :data:`AUTO_BATCH` when batches fill without anyone waiting long, i.e. every source is a file
    read as fast as it goes, or at least :data:`LIVE_BATCH_STREAMS` streams deliver frames; else
    1. A library pipeline (``streams_may_join``) starts with what it has and takes 1."""
    if streams_may_join:
        return 1
    return AUTO_BATCH if files_only(cfg) or len(cfg.streams) >= LIVE_BATCH_STREAMS else 1


def files_only(cfg: RunConfig) -> bool:
    """Every source is a file read as fast as it goes (not live, not paced): nobody waits for a
    batch to fill."""
    return all(not is_live(src) and not src.realtime and not src.max_fps for src in cfg.streams)
