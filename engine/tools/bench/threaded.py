"""What a user writes instead of ``ovstream run`` for a folder of images: one process, threads.

A 2-thread pool reads each image (``cv2.imdecode``, reduced-size JPEG decode when the model input
is much smaller, exactly the engine's :func:`~engine.io.sources.load_image`) and letterboxes it into
a fresh model-input array (the engine's :class:`~engine.core.geometry.Geometry`); the main thread
starts it on an OpenVINO ``AsyncInferQueue`` of 2 requests, whose callback parses the outputs
with the model's own adapter and appends one JSON line per frame to ``results.jsonl`` (in
completion order, flushed as it goes). The model is read, prepared and compiled as the engine
does (uint8 BGR NHWC in, the config's hint; or, with ``--settings default``, OpenVINO's own defaults
as a plain ``core.compile_model(model, device)`` gives), so both produce the same detections; without a
compiled-model cache unless ``--cache-dir`` asks for one (the plain script compiles every time).

Run as ``python -m engine.tools.bench.threaded --images DIR [--model NAME] [--loop N] --output DIR``; it
writes ``DIR/results.jsonl`` and ``DIR/summary.json`` (frames, the CPU seconds at the first
submitted frame and at the end, for the CPU per frame without start-up).
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openvino as ov

from engine.config import load_config
from engine.core.geometry import Geometry
from engine.io.sources import IMAGE_EXTENSIONS, load_image
from engine.model.adapters import create_adapter
from engine.model.detect import detect_model
from engine.model.prepare import compile_model, output_shapes, prepare_model, read_model

NIREQ = 2          # the script: AsyncInferQueue with 2 requests
THREADS = 2        # and a 2-thread reading pool
AHEAD = 4          # images read ahead of the inference queue


def run(images: Path, output: Path, model: str | None = None, loop: int = 1, device: str = "CPU",
        config: str | None = None, nireq: int = NIREQ, threads: int = THREADS, cache_dir: str = "off",
        settings: str = "engine") -> dict:
    """Every image of ``images``, ``loop`` times, through the model; returns the summary dict."""
    overrides: dict = {"sources": [{"uri": str(images)}]}
    if model:
        overrides["model"] = {"path" if Path(model).suffix else "name": model}
    cfg = load_config(config, overrides, detect=detect_model)
    core = ov.Core()
    prepared, info = prepare_model(read_model(core, cfg.model.path), cfg.model, 1)
    defaults = {"hint": "NONE", "streams": 0, "threads": 0} if settings == "default" else {}
    own = {"nireq": 0, "cache_dir": cache_dir} | defaults
    compiled = compile_model(core, prepared, device, cfg.inference.model_copy(update=own))
    adapter = create_adapter(cfg.model)
    names = list(output_shapes(compiled))
    pre = cfg.model.preprocess
    min_side = max(info.height, info.width) if cfg.pipeline.reduced_decode else 0
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS) * loop
    output.mkdir(parents=True, exist_ok=True)
    out = open(output / "results.jsonl", "w", encoding="utf-8")
    lock = threading.Lock()
    counts = {"frames": 0, "errors": 0}

    def load(path: Path) -> tuple[np.ndarray | None, Geometry | None, str]:
        frame, error, original = load_image(path, min_side)
        if frame is None:
            return None, None, error or "unreadable"
        geometry = Geometry.plan(frame.shape[1], frame.shape[0], info.width, info.height, pre.resize, pre.crop)
        pixels = np.empty((1, info.height, info.width, 3), np.uint8)
        geometry.resize_into(frame, pixels[0], pre.interpolation, pre.pad)
        if original is not None:
            geometry = geometry.scaled_to(*original)
        return pixels, geometry, ""

    def done(request: ov.InferRequest, userdata: tuple[int, str, Geometry]) -> None:
        index, source, geometry = userdata
        outputs = {name: request.get_output_tensor(i).data for i, name in enumerate(names)}
        detections = [d.to_dict() for d in adapter.decode(outputs, geometry)]   # a plain script's own line
        line = json.dumps({"frame_id": index, "source": source, "status": "ok", "detections": detections})
        with lock:
            out.write(line + "\n")
            out.flush()
            counts["frames"] += 1

    queue = ov.AsyncInferQueue(compiled, nireq)
    queue.set_callback(done)
    cpu_start = time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        pending = [pool.submit(load, p) for p in paths[:AHEAD]]
        for index, path in enumerate(paths):
            pixels, geometry, error = pending.pop(0).result()
            if index + AHEAD < len(paths):
                pending.append(pool.submit(load, paths[index + AHEAD]))
            if pixels is None:
                with lock:
                    out.write(json.dumps({"frame_id": index, "source": str(path), "status": "error",
                                          "error": error}) + "\n")
                    counts["errors"] += 1
                continue
            queue.start_async({0: pixels}, (index, str(path), geometry))
    queue.wait_all()
    out.close()
    summary = {**counts, "cpu_s_start": round(cpu_start, 4), "cpu_s_end": round(time.process_time(), 4),
               "nireq": nireq, "threads": threads, "model": cfg.model.name or cfg.model.path,
               "hint": str(compiled.get_property("PERFORMANCE_HINT")),
               "ov_streams": int(compiled.get_property("NUM_STREAMS"))}
    (output / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.tools.bench.threaded", description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="image folder")
    parser.add_argument("--output", required=True, help="folder for results.jsonl and summary.json")
    parser.add_argument("--model", help="registry name or model file (default: the config's model)")
    parser.add_argument("--config", help="TOML config (default: configs/default.toml)")
    parser.add_argument("--loop", type=int, default=1, help="passes over the images")
    parser.add_argument("--device", default="CPU")
    parser.add_argument("--nireq", type=int, default=NIREQ)
    parser.add_argument("--threads", type=int, default=THREADS)
    parser.add_argument("--cache-dir", default="off",
                        help="OpenVINO compiled-model cache: off (default, as the plain script), auto, or a folder")
    parser.add_argument("--settings", choices=("engine", "default"), default="engine",
                        help="OpenVINO compile settings: the engine's (config hint) or OpenVINO's defaults")
    a = parser.parse_args(argv)
    summary = run(Path(a.images), Path(a.output), a.model, max(1, a.loop), a.device, a.config, a.nireq, a.threads,
                  a.cache_dir, a.settings)
    return 0 if summary["frames"] and not summary["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
