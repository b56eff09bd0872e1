"""The codelab's two single-process loops, doing the engine's work per frame.

Each frame: ``cv2.imread`` → :meth:`Geometry.resize_into` the model input (as the preprocessor
does) → OpenVINO (the model prepared by :func:`engine.model.prepare.prepare_model`, so uint8 BGR NHWC goes
in) → the model's adapter turns the outputs into :class:`~engine.core.results.Detection` s in frame pixels.

- :func:`sync_loop` is the codelab's synchronous sample: one infer request, ``infer()`` per frame.
- :func:`async_loop` is its "wait completion" pattern: start request *i*, then wait on the oldest
  request in flight and parse its result — explicit waits, no AsyncInferQueue callbacks.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import openvino as ov

from engine.config import InferenceConfig, ModelConfig, PreprocessConfig
from engine.core.geometry import Geometry
from engine.core.results import Classification, Detection
from engine.io.sources import IMAGE_EXTENSIONS
from engine.model.adapters import Adapter, create_adapter
from engine.model.prepare import InputInfo, compile_model, device_info, output_shapes, prepare_model, read_model
from engine.tools.bench.stats import percentile


@dataclass
class LoopResult:
    """One pass of a loop: throughput, per-frame latency and (optionally) the detections."""

    name: str
    frames: int
    seconds: float
    latency_ms: list[float]
    nireq: int
    properties: dict = field(default_factory=dict)
    detections: list[Sequence[Detection | Classification]] | None = None   # per frame, in image order (when kept)
    failures: int = 0                            # images cv2.imread could not read
    stage_ms: dict[str, float] = field(default_factory=dict)   # mean ms/frame of read, resize, infer, parse

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict:
        return {"fps": round(self.fps, 2), "frames": self.frames, "seconds": round(self.seconds, 4),
                "latency_ms": {"median": _round(percentile(self.latency_ms, 50)),
                               "p95": _round(percentile(self.latency_ms, 95))},
                "stage_ms": {k: round(v, 3) for k, v in self.stage_ms.items()},
                "nireq": self.nireq, "failures": self.failures, "properties": self.properties}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def list_images(folder: str | Path) -> list[Path]:
    """The image files of ``folder``, sorted by name (the order the engine reads them)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


class Prepared:
    """The model read once and prepared as the engine prepares it; compiled per loop."""

    def __init__(self, model_cfg: ModelConfig, device: str = "CPU") -> None:
        self.model_cfg = model_cfg
        self.device = device
        self.core = ov.Core()
        self.model, self.info = prepare_model(read_model(self.core, model_cfg.path), model_cfg, 1)
        self.pre = model_cfg.preprocess

    def compile(self, hint: str, nireq: int = 0) -> ov.CompiledModel:
        cfg = InferenceConfig(devices=[self.device], hint=hint, nireq=nireq)
        return compile_model(self.core, self.model, self.device, cfg)

    def adapter(self) -> Adapter:
        return create_adapter(self.model_cfg)


class _Clock:
    """Sums of seconds per step, for the mean ms/frame each step costs."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}

    def add(self, step: str, seconds: float) -> None:
        self.sums[step] = self.sums.get(step, 0.0) + seconds

    def per_frame_ms(self, frames: int) -> dict[str, float]:
        return {k: v * 1000 / frames for k, v in self.sums.items()} if frames else {}


def _load(path: Path, info: InputInfo, pre: PreprocessConfig, dst: np.ndarray, clock: _Clock) -> Geometry | None:
    """imread + the engine's resize into ``dst``; None for an unreadable image."""
    t0 = time.perf_counter()
    frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
    t1 = time.perf_counter()
    clock.add("read", t1 - t0)
    if frame is None:
        return None
    geometry = Geometry.plan(frame.shape[1], frame.shape[0], info.width, info.height, pre.resize, pre.crop)
    geometry.resize_into(frame, dst, pre.interpolation, pre.pad)
    clock.add("resize", time.perf_counter() - t1)
    return geometry


def _outputs(request: ov.InferRequest, names: list[str]) -> dict[str, np.ndarray]:
    return {name: request.get_output_tensor(i).data for i, name in enumerate(names)}


def sync_loop(prepared: Prepared, images: list[Path], passes: int = 1, keep: bool = False,
              compiled: ov.CompiledModel | None = None) -> LoopResult:
    """(a) The codelab's sync sample: read, resize, ``infer()``, parse; one frame at a time."""
    compiled = compiled or prepared.compile("LATENCY")
    adapter = prepared.adapter()
    names = list(output_shapes(compiled))
    info, pre = prepared.info, prepared.pre
    request = compiled.create_infer_request()
    buffer = np.zeros((1, info.height, info.width, 3), np.uint8)
    request.set_input_tensor(ov.Tensor(buffer, shared_memory=True))
    detections: list[Sequence[Detection | Classification]] = []
    latency: list[float] = []
    failures = 0
    clock = _Clock()
    t_start = time.perf_counter()
    for _ in range(passes):
        for path in images:
            t0 = time.perf_counter()
            geometry = _load(path, info, pre, buffer[0], clock)
            if geometry is None:
                failures += 1
                continue
            t1 = time.perf_counter()
            request.infer()
            t2 = time.perf_counter()
            found = adapter.decode(_outputs(request, names), geometry)
            t3 = time.perf_counter()
            clock.add("infer", t2 - t1)
            clock.add("parse", t3 - t2)
            latency.append((t3 - t0) * 1000)
            if keep:
                detections.append(found)
    seconds = time.perf_counter() - t_start
    return LoopResult("sync", len(latency), seconds, latency, 1, device_info(compiled),
                      detections if keep else None, failures, clock.per_frame_ms(len(latency)))


def async_loop(prepared: Prepared, images: list[Path], nireq: int = 0, passes: int = 1, keep: bool = False,
               compiled: ov.CompiledModel | None = None) -> LoopResult:
    """(b) The codelab's "wait completion" async pattern with ``nireq`` requests.

    Frame *k* goes to request ``k % nireq``; after starting it, the loop waits on the oldest
    request still in flight (``previous``, ``nireq - 1`` behind) and parses its result, so up to
    ``nireq`` requests run while the next frame is read and resized. Same work per frame as
    :func:`sync_loop`; 0 requests means the device's OPTIMAL_NUMBER_OF_INFER_REQUESTS.
    """
    compiled = compiled or prepared.compile("THROUGHPUT", nireq)
    nireq = nireq or int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    adapter = prepared.adapter()
    names = list(output_shapes(compiled))
    info, pre = prepared.info, prepared.pre
    requests = [compiled.create_infer_request() for _ in range(nireq)]
    buffers = [np.zeros((1, info.height, info.width, 3), np.uint8) for _ in range(nireq)]
    for request, buffer in zip(requests, buffers):
        request.set_input_tensor(ov.Tensor(buffer, shared_memory=True))
    pending: list[tuple[int, Geometry, float] | None] = [None] * nireq   # (frame index, geometry, t0)
    results: dict[int, Sequence[Detection | Classification]] = {}
    latency: list[float] = []
    failures = 0
    clock = _Clock()

    def parse(slot: int) -> None:
        held = pending[slot]
        if held is None:
            return
        t_wait = time.perf_counter()
        requests[slot].wait()
        t_parse = time.perf_counter()
        index, geometry, t0 = held
        found = adapter.decode(_outputs(requests[slot], names), geometry)
        t_end = time.perf_counter()
        clock.add("wait", t_parse - t_wait)
        clock.add("parse", t_end - t_parse)
        latency.append((t_end - t0) * 1000)
        if keep:
            results[index] = found
        pending[slot] = None

    current, previous = 0, 1 - nireq
    index = 0
    t_start = time.perf_counter()
    for _ in range(passes):
        for path in images:
            t0 = time.perf_counter()
            parse(current)                      # only at the end of a short run: normally already parsed
            geometry = _load(path, info, pre, buffers[current][0], clock)
            if geometry is None:
                failures += 1
                continue
            requests[current].start_async()
            pending[current] = (index, geometry, t0)
            index += 1
            if previous >= 0:
                parse(previous)                 # wait on the oldest request in flight
            current = (current + 1) % nireq
            previous = previous + 1 if previous + 1 < nireq else 0
    for k in range(nireq):                      # drain, oldest first
        parse((current + k) % nireq)
    seconds = time.perf_counter() - t_start
    ordered = [results[i] for i in sorted(results)] if keep else None
    return LoopResult("async", len(latency), seconds, latency, nireq, device_info(compiled), ordered, failures,
                      clock.per_frame_ms(len(latency)))
