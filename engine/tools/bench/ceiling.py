"""(e) The inference-only ceiling: OpenVINO's own ``benchmark_app`` on the same model and device.

benchmark_app feeds random tensors from memory to as many async requests as the device wants, so
its throughput is what the device can do with no decoding, resizing or parsing at all.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import openvino as ov

from engine.model.prepare import read_model

_THROUGHPUT = re.compile(r"Throughput:\s*([0-9.]+)\s*FPS")
_COUNT = re.compile(r"Count:\s*([0-9]+)\s*iterations")
_DURATION = re.compile(r"Duration:\s*([0-9.]+)\s*ms")
_REQUESTS = re.compile(r"\(.*?([0-9]+) inference requests")
_STREAMS = re.compile(r"NUM_STREAMS:\s*([0-9]+)")
_PRECISION = re.compile(r"INFERENCE_PRECISION_HINT:\s*<Type: '([^']+)'>")
_LATENCY = {key: re.compile(rf"^\[ INFO \]\s+{label}:\s*([0-9.]+)\s*ms", re.M)
            for key, label in (("median", "Median"), ("avg", "Average"), ("min", "Min"), ("max", "Max"))}


@dataclass
class BenchmarkAppResult:
    """The figures of one benchmark_app run, in its own words."""

    throughput_fps: float
    latency_ms: dict[str, float] = field(default_factory=dict)
    count: int | None = None
    duration_ms: float | None = None
    nireq: int | None = None
    streams: int | None = None
    precision: str | None = None

    def to_dict(self) -> dict:
        return {"throughput_fps": self.throughput_fps, "latency_ms": self.latency_ms, "count": self.count,
                "duration_ms": self.duration_ms, "nireq": self.nireq, "streams": self.streams,
                "precision": self.precision}


T = TypeVar("T")


def _first(pattern: re.Pattern, text: str, kind: Callable[[str], T]) -> T | None:
    match = pattern.search(text)
    return kind(match.group(1)) if match else None


def parse_output(text: str) -> BenchmarkAppResult:
    """Parse benchmark_app's report; ValueError when it has no ``Throughput: X FPS`` line."""
    fps = _first(_THROUGHPUT, text, float)
    if fps is None:
        tail = " | ".join(line.strip() for line in text.strip().splitlines()[-3:])
        raise ValueError(f"no 'Throughput: X FPS' line in benchmark_app output ({tail[:300]})")
    latency: dict[str, float] = {}
    stats = text[text.find("Dumping statistics"):] if "Dumping statistics" in text else text
    for key, pattern in _LATENCY.items():
        value = _first(pattern, stats, float)
        if value is not None:
            latency[key] = value
    return BenchmarkAppResult(fps, latency, _first(_COUNT, text, int), _first(_DURATION, text, float),
                              _first(_REQUESTS, text, int), _first(_STREAMS, text, int),
                              _first(_PRECISION, text, str))


def find_benchmark_app() -> str | None:
    """benchmark_app beside this interpreter (a venv's bin), else on PATH."""
    local = Path(sys.executable).with_name("benchmark_app")
    return str(local) if local.exists() else shutil.which("benchmark_app")


def shape_args(model_path: str, info_height: int, info_width: int, batch: int = 1) -> list[str]:
    """``-shape``/``-layout`` only when the model's image input is not already the engine's shape.

    The engine feeds ``[batch, H, W, 3]`` (after PrePostProcessor); a static model of that size
    needs no flags, a dynamic one (or another batch) gets the engine's shape in its own layout.
    """
    model = read_model(ov.Core(), model_path)
    port = next(p for p in model.inputs if p.get_partial_shape().rank.get_length() == 4)
    pshape = port.get_partial_shape()
    dims = [d.get_length() if d.is_static else -1 for d in pshape]
    nchw = dims[1] in (1, 3) and dims[3] not in (1, 3)
    want = [batch, dims[1], info_height, info_width] if nchw else [batch, info_height, info_width, dims[3]]
    want = [3 if d <= 0 else d for d in want]
    if dims == want:
        return []
    name = port.get_any_name()
    shape = ",".join(str(d) for d in want)
    return ["-shape", f"{name}[{shape}]", "-layout", f"{name}[{'NCHW' if nchw else 'NHWC'}]"]


def run_benchmark_app(model_path: str, device: str = "CPU", seconds: int = 10, extra: list[str] | None = None,
                      log: Path | None = None, timeout_s: float = 300.0) -> tuple[BenchmarkAppResult, list[str], float]:
    """Run ``benchmark_app -m MODEL -d DEVICE -hint throughput -t SECONDS``; (result, command, wall s)."""
    exe = find_benchmark_app()
    if exe is None:
        raise FileNotFoundError("benchmark_app not found (it ships with the openvino wheel)")
    cmd = [exe, "-m", str(model_path), "-d", device, "-hint", "throughput", "-t", str(seconds), *(extra or [])]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(" ".join(cmd) + "\n\n" + text, encoding="utf-8")
    if proc.returncode != 0:
        tail = " | ".join(line.strip() for line in text.strip().splitlines()[-3:])
        raise RuntimeError(f"benchmark_app exited with {proc.returncode}: {tail[:400]}")
    return parse_output(text), cmd, wall
