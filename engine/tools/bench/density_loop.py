"""What a user writes instead of the engine to watch N cameras: one process, threads, AsyncInferQueue.

One reader thread per stream decodes its video at the native frame rate (a camera's pace) into a
one-frame buffer: a frame not taken before the next one arrives is dropped and counted, as a
camera's would be. A thread pool resizes (the model's resize mode) the newest frame of each stream
(round robin over the streams) and starts it on an OpenVINO ``AsyncInferQueue``, whose callback parses the outputs with
the model's adapter. The same work per frame as the engine, in the usual threaded shape.

Run as ``python -m engine.tools.bench.density_loop --video V --streams N --seconds T [--warmup W]``; prints one
JSON object on stdout: per-stream delivered frames and drops in the measured window (it opens ``W`` s after every
stream's first result), the window's length, the process's CPU seconds in it, the p95 of capture-to-parsed
latency in it, and the seconds from the process's start to every stream's first result.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import openvino as ov
import psutil

from engine.config import load_config
from engine.core.geometry import Geometry
from engine.io.sources import ffmpeg_params, ffmpeg_threads
from engine.model.detect import detect_model
from engine.model.prepare import output_shapes
from engine.tools.bench.loops import Prepared

START_TIMEOUT_S = 120.0      # every stream's first result by then, or the run fails


class Camera(threading.Thread):
    """Reads a video in a loop at ``fps`` into a one-frame buffer, counting overwritten frames."""

    def __init__(self, video: str, fps: float, stop: threading.Event, wake: threading.Condition,
                 threads: int = 0) -> None:
        super().__init__(daemon=True)
        self.video, self.period, self.stop, self.wake = video, 1.0 / fps, stop, wake
        self.threads = threads          # FFmpeg's decoding threads, as the engine chooses them
        self.latest: tuple[np.ndarray, float] | None = None
        self.read = 0
        self.drops = 0

    def run(self) -> None:
        capture = cv2.VideoCapture(self.video, cv2.CAP_FFMPEG, ffmpeg_params(self.threads))
        next_frame = time.perf_counter()
        while not self.stop.is_set():
            ok, frame = capture.read()
            if not ok:
                capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
                continue
            delay = next_frame - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            next_frame += self.period
            with self.wake:
                if self.latest is not None:
                    self.drops += 1
                self.latest = (frame, time.perf_counter())
                self.read += 1
                self.wake.notify()
        capture.release()

    def take(self) -> tuple[np.ndarray, float] | None:
        item, self.latest = self.latest, None
        return item


def serve(video: str, streams: int, seconds: float, fps: float, model: str, device: str,
          warmup_s: float = 0.0) -> dict:
    """Serve ``streams`` cameras until ``seconds`` have been measured, in a window that opens
    ``warmup_s`` after every stream's first result (as the density bench counts the engine)."""
    key = "path" if os.path.splitext(model)[1] else "name"
    cfg = load_config(None, {"model": {key: model}}, detect=detect_model)
    prepared = Prepared(cfg.model, device)
    compiled = prepared.compile("THROUGHPUT")
    adapter = prepared.adapter()
    names = list(output_shapes(compiled))
    info, pre = prepared.info, prepared.pre
    nireq = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    queue = ov.AsyncInferQueue(compiled, nireq)
    done, first = [0] * streams, [False] * streams
    latencies: list[float] = []
    measuring = threading.Event()

    def on_done(request: ov.InferRequest, userdata: tuple[int, Geometry, float]) -> None:
        stream, geometry, captured = userdata
        adapter.decode({n: request.get_output_tensor(i).data for i, n in enumerate(names)}, geometry)
        first[stream] = True
        if measuring.is_set():
            done[stream] += 1
            latencies.append(time.perf_counter() - captured)

    queue.set_callback(on_done)
    start_lock = threading.Lock()       # AsyncInferQueue.start_async is not safe from two threads at once

    def infer(stream: int, frame: np.ndarray, captured: float) -> None:
        geometry = Geometry.plan(frame.shape[1], frame.shape[0], info.width, info.height, pre.resize, pre.crop)
        pixels = np.empty((1, info.height, info.width, 3), np.uint8)
        geometry.resize_into(frame, pixels[0], pre.interpolation, pre.pad)
        with start_lock:
            queue.start_async({0: pixels}, (stream, geometry, captured))

    def infer_and_release(stream: int, frame: np.ndarray, captured: float) -> None:
        try:
            infer(stream, frame, captured)
        finally:
            in_pool.release()

    stop, wake = threading.Event(), threading.Condition()
    threads = ffmpeg_threads(0, streams)
    cameras = [Camera(video, fps, stop, wake, threads) for _ in range(streams)]
    for camera in cameras:
        camera.start()
    pool = ThreadPoolExecutor(max_workers=os.cpu_count() or 2)
    in_pool = threading.Semaphore(nireq * 2)          # bounded: at most this many frames queued
    window_start = end = float("inf")
    startup_s = 0.0
    base_read, base_drops = [0] * streams, [0] * streams
    cpu0 = 0.0
    turn = 0
    began = time.perf_counter()
    while (now := time.perf_counter()) < end:
        if window_start == float("inf") and now - began > START_TIMEOUT_S:
            stop.set()
            raise SystemExit(f"not every stream delivered within {START_TIMEOUT_S:.0f} s")
        if window_start == float("inf") and all(first):
            startup_s = time.time() - psutil.Process().create_time()
            window_start = now + warmup_s
        if not measuring.is_set() and now >= window_start:
            with wake:
                base_read = [c.read for c in cameras]
                base_drops = [c.drops for c in cameras]
            measuring.set()
            cpu0, window_start = time.process_time(), now
            end = now + seconds
        with wake:
            ready = [i for i in range(streams) if cameras[(turn + i) % streams].latest is not None]
            if not ready:
                wake.wait(0.05)
                continue
            stream = (turn + ready[0]) % streams
            taken = cameras[stream].take()
        assert taken is not None                   # ready: it has a frame
        frame, captured = taken
        turn = stream + 1
        in_pool.acquire()
        pool.submit(infer_and_release, stream, frame, captured)
    measuring.clear()
    window_s, cpu_s = time.perf_counter() - window_start, time.process_time() - cpu0
    with wake:
        reads = [c.read - b for c, b in zip(cameras, base_read)]
        drops = [c.drops - b for c, b in zip(cameras, base_drops)]
    stop.set()
    pool.shutdown(wait=True)
    queue.wait_all()
    p95 = float(np.percentile(latencies, 95)) * 1000 if latencies else None
    return {"streams": streams, "seconds": seconds, "nireq": nireq, "delivered": done, "read": reads,
            "drops": drops, "window_s": round(window_s, 3), "cpu_s": round(cpu_s, 3),
            "p95_ms": round(p95, 1) if p95 is not None else None, "startup_s": round(startup_s, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.tools.bench.density_loop",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--video", required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--model", required=True, help="registry name or model file")
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--warmup", type=float, default=0.0, help="seconds after every stream's first result "
                                                                  "before the window opens")
    args = parser.parse_args()
    result = serve(args.video, args.streams, args.seconds, args.fps, args.model, args.device, args.warmup)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
