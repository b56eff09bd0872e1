"""The machine's bound for a stream workload: how many streams it could sustain with zero overhead.

Every frame of a stream must be decoded, resized to the model's input, inferred and parsed; nothing
else is unavoidable. Each cost is measured here on its own, independently of the engine:

- decode: a plain ``cv2.VideoCapture`` reading the clip on one FFmpeg thread (the least CPU per
  frame: frame threading adds hand-offs), CPU time of this process per frame;
- resize: ``cv2.resize`` (bilinear) of those frames to the model's input size, CPU time per frame;
- inference: OpenVINO's ``benchmark_app`` (THROUGHPUT hint, its own requests and streams) at batch 1
  and at the engine's auto batch when the graph takes it, the better one: the device's cores × 1000
  ÷ its FPS is the core-milliseconds one inferred frame costs on a CPU it saturates;
- parse: the model's adapter decoding real outputs of the clip's frames, CPU time per frame.

The bound is ``cores ÷ (FPS per stream × the sum in core-seconds)`` streams. Beside it, what it
leaves any pipeline: at the target (:data:`TARGET_OF_BOUND` of it, rounded up to whole streams) the
core-ms per frame a pipeline may spend beyond that work on fully busy cores, and what each variant
of a density run did spend beyond it at the count it sustained.
"""
from __future__ import annotations

import math
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import openvino as ov

from engine.config import ModelConfig
from engine.core.geometry import Geometry
from engine.io.sources import ffmpeg_params
from engine.model.adapters import create_adapter
from engine.model.prepare import AUTO_BATCH, input_info, output_shapes, read_model, takes_batch
from engine.tools.bench.ceiling import run_benchmark_app, shape_args
from engine.tools.bench.density import SAMPLED_VARIANTS
from engine.tools.modeltools.datasets import InputPreparer

TARGET_OF_BOUND = 0.9   # streams sustained wanted, as a fraction of the bound
FRAMES = 300          # frames decoded (the clip is re-opened when shorter)
PARSE_FRAMES = 50     # frames whose outputs the adapter parses


@dataclass
class Bound:
    """Core-milliseconds per frame of each unavoidable step, and the streams they allow."""

    decode_ms: float
    resize_ms: float
    infer_ms: float
    parse_ms: float
    infer_batch: int
    infer_fps: float
    cores: int
    fps: float

    @property
    def frame_ms(self) -> float:
        return self.decode_ms + self.resize_ms + self.infer_ms + self.parse_ms

    @property
    def streams(self) -> float:
        return self.cores * 1000.0 / (self.fps * self.frame_ms)

    def allowance_ms(self, streams: int) -> float:
        """Core-ms per frame a pipeline may spend beyond the unavoidable work to sustain ``streams``
        on fully busy cores; negative past the bound, where no pipeline can."""
        return self.cores * 1000.0 / (self.fps * streams) - self.frame_ms

    def target_streams(self) -> int:
        """The fewest whole streams that are at least :data:`TARGET_OF_BOUND` of the bound."""
        return max(1, math.ceil(round(TARGET_OF_BOUND * self.streams, 6)))

    def to_dict(self) -> dict:
        rounded = {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}
        target = self.target_streams()
        return {**rounded, "frame_ms": round(self.frame_ms, 3), "streams": round(self.streams, 2),
                "target_fraction": TARGET_OF_BOUND, "target_streams": target,
                "target_allowance_ms": round(self.allowance_ms(target), 3)}


def judge(density: dict, bound: Bound) -> dict:
    """A density summary against the bound: the engine's sustained streams as a fraction of it, and
    per every-frame variant the CPU per frame it spent beyond the unavoidable work at the count it
    sustained (median of its repeats; None where it sustained none). The budget variant infers a
    fraction of its frames, so the work per frame is not its floor: it has no such figure."""
    beyond: dict[str, float | None] = {}
    for name, variant in density["variants"].items():
        if name in SAMPLED_VARIANTS:
            continue
        row = variant["by_streams"].get(variant["sustained_streams"]) or {}
        cpu = (row.get("cpu_ms_per_frame") or {}).get("median")
        beyond[name] = round(cpu - bound.frame_ms, 2) if cpu is not None else None
    engine = density["variants"].get("engine", {}).get("sustained_streams")
    return {"bound": bound.to_dict(), "beyond_work_ms": beyond,
            "engine_of_bound": round(engine / bound.streams, 3) if engine is not None else None}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def decode_frames(video: Path, count: int = FRAMES) -> tuple[list[np.ndarray], float]:
    """(the first frames, kept for the next steps; CPU ms per frame of reading ``count`` frames)."""
    kept: list[np.ndarray] = []
    read = 0
    started = _cpu_s()
    while read < count:
        capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG, ffmpeg_params(1))   # the cheapest per frame
        if not capture.isOpened():
            raise RuntimeError(f"{video}: cv2 cannot open it")
        before = read
        while read < count:
            ok, frame = capture.read()
            if not ok:
                break
            read += 1
            if len(kept) < PARSE_FRAMES:
                kept.append(frame)
        capture.release()
        if read == before:
            raise RuntimeError(f"{video}: no frames")
    return kept, (_cpu_s() - started) * 1000.0 / read


def resize_ms(frames: list[np.ndarray], width: int, height: int, count: int = FRAMES) -> float:
    """CPU ms per bilinear resize of a frame to the model's input."""
    target = np.empty((height, width, 3), dtype=np.uint8)
    started = _cpu_s()
    for i in range(count):
        cv2.resize(frames[i % len(frames)], (width, height), dst=target, interpolation=cv2.INTER_LINEAR)
    return (_cpu_s() - started) * 1000.0 / count


def inference_ms(cfg: ModelConfig, device: str, cores: int, seconds: int, log_dir: Path) -> tuple[float, int, float]:
    """(core-ms per inferred frame, the batch it was best at, that FPS) from benchmark_app."""
    model = read_model(ov.Core(), cfg.path)
    info = input_info(model, cfg.params)
    batches = [1] + ([AUTO_BATCH] if takes_batch(model, cfg) else [])
    ir = log_dir / "model.xml"      # read as the engine reads it (a .tflite with the engine's conversion extensions)
    log_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, ir, compress_to_fp16=False)
    best_fps, best_batch = 0.0, 1
    for batch in batches:
        extra = shape_args(str(ir), info.height, info.width, batch)
        result, _, _ = run_benchmark_app(str(ir), device, seconds, extra, log=log_dir / f"benchmark_app-b{batch}.log")
        if result.throughput_fps > best_fps:    # benchmark_app counts frames: batch × iterations / time
            best_fps, best_batch = result.throughput_fps, batch
    return cores * 1000.0 / best_fps, best_batch, best_fps


def parse_ms(cfg: ModelConfig, frames: list[np.ndarray], repeats: int = 5) -> float:
    """CPU ms per frame of the adapter decoding the model's real outputs for ``frames``."""
    core = ov.Core()
    model = read_model(core, cfg.path)
    prepare = InputPreparer(model, cfg, core)
    compiled = core.compile_model(model, "CPU")
    names = list(output_shapes(compiled))
    adapter = create_adapter(cfg)
    decoded: list[tuple[dict[str, np.ndarray], Geometry]] = []
    for n, frame in enumerate(frames):
        sample = prepare(frame, f"frame {n}")
        result = compiled({0: sample.tensor})
        decoded.append(({name: result[i] for i, name in enumerate(names)}, sample.geometry))
    started = time.thread_time()
    for _ in range(repeats):
        for outputs, geometry in decoded:
            adapter.answer(adapter.decode(outputs, geometry))
    return (time.thread_time() - started) * 1000.0 / (repeats * len(decoded))


def measure_bound(video: Path, cfg: ModelConfig, device: str, fps: float, log_dir: Path,
                  seconds: int = 5) -> Bound:
    """Measure each step on its own and return the bound for streams of ``video`` at ``fps``."""
    cores = len(os.sched_getaffinity(0))
    info = input_info(read_model(ov.Core(), cfg.path), cfg.params)
    frames, decode = decode_frames(video)
    resize = resize_ms(frames, info.width, info.height)
    infer, batch, infer_fps = inference_ms(cfg, device, cores, seconds, log_dir)
    parse = parse_ms(cfg, frames)
    return Bound(decode, resize, infer, parse, batch, infer_fps, cores, fps)
