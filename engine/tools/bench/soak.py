"""Memory soak: ``ovstream run`` on a looped synthetic video, RSS of every engine process each second.

The video is ~200 frames written with ``cv2.VideoWriter`` from the bundled images (so the
detector sees real content); ``--loop`` replays it to reach the requested frame count. A process
is *stable* when every sample after the warm-up (the first 10 % of the stream) and before the
stream's end stays within ±5 % of its RSS at the end of the warm-up. The stream's window comes from
the run's report (start = report time − duration; end = start + frames / throughput), so start-up
(compiling) and shutdown (unmapping) samples are shown but not judged.
"""
from __future__ import annotations

import json
import math
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import psutil

from engine.control.launch import stage_of

VIDEO_FRAMES = 200
WARMUP_FRACTION = 0.10
TOLERANCE = 0.05


def write_video(path: Path, images: list[Path], frames: int = VIDEO_FRAMES, size: tuple[int, int] = (640, 480),
                fps: float = 25.0) -> Path:
    """A video of ``frames`` frames cycling through ``images`` (drifting slightly); mp4v, else MJPG avi."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stills = [cv2.resize(img, size) for img in (cv2.imread(str(p)) for p in images[:50]) if img is not None]
    if not stills:
        stills = [np.full((size[1], size[0], 3), 127, np.uint8)]
    for target, fourcc in ((path.with_suffix(".mp4"), "mp4v"), (path.with_suffix(".avi"), "MJPG")):
        writer = cv2.VideoWriter(str(target), cv2.VideoWriter.fourcc(*fourcc), fps, size)
        if not writer.isOpened():
            continue
        for i in range(frames):
            frame = np.roll(stills[(i // 4) % len(stills)], shift=(i % 4) * 3, axis=1)
            writer.write(frame)
        writer.release()
        capture = cv2.VideoCapture(str(target))
        readable = capture.isOpened() and capture.read()[0]
        capture.release()
        if readable and target.stat().st_size > 0:
            return target
    raise RuntimeError("cv2.VideoWriter could write neither mp4v nor MJPG video")


@dataclass
class ProcessTrace:
    """RSS samples of one named engine process (its pid may change on a restart)."""

    name: str
    pids: list[int] = field(default_factory=list)
    samples: list[tuple[float, int]] = field(default_factory=list)   # (unix time, RSS bytes)

    def verdict(self, start: float, end: float) -> dict:
        """First/last/max RSS, and stability over the stream ``[start, end]`` (times as in ``samples``)
        after its warm-up (the first :data:`WARMUP_FRACTION` of it)."""
        mib = 1 << 20
        rss = [r for _, r in self.samples]
        warm = start + WARMUP_FRACTION * (end - start)
        after = [(t, r) for t, r in self.samples if warm <= t <= end]
        out = {"name": self.name, "pids": self.pids, "samples": len(rss),
               "first_mib": round(rss[0] / mib, 1), "last_mib": round(rss[-1] / mib, 1),
               "max_mib": round(max(rss) / mib, 1)}
        if len(after) < 2:
            out.update(stable=None, note="too few samples after warm-up")
        else:
            ref = after[0][1]
            low, high = min(r for _, r in after), max(r for _, r in after)
            out.update(after_warmup_mib=round(ref / mib, 1), end_mib=round(after[-1][1] / mib, 1),
                       drift_pct=round((after[-1][1] - ref) / ref * 100, 2),
                       range_pct=[round((low - ref) / ref * 100, 2), round((high - ref) / ref * 100, 2)],
                       stable=bool(low >= ref * (1 - TOLERANCE) and high <= ref * (1 + TOLERANCE)))
        out["samples_mib"] = [[round(t - start, 1), round(r / mib, 1)] for t, r in self.samples]
        return out


def _engine_name(proc: psutil.Process) -> str | None:
    """``inference-0`` for a stage process (``python -m workers.inference inference-0``); None if not a stage."""
    try:
        return stage_of(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def sample_tree(root: psutil.Process) -> dict[str, tuple[int, int]]:
    """``{name: (pid, rss bytes)}`` for the run process (``supervisor``) and its stage processes."""
    out = {}
    try:
        out["supervisor"] = (root.pid, root.memory_info().rss)
        children = root.children(recursive=True)
    except psutil.NoSuchProcess:
        return out
    for child in children:
        name = _engine_name(child)
        if name is None:
            continue
        try:
            out[name] = (child.pid, child.memory_info().rss)
        except psutil.NoSuchProcess:
            continue
    return out


def soak(cmd: list[str], output: Path, interval_s: float = 1.0, timeout_s: float = 3600.0, progress=None) -> dict:
    """Run ``cmd`` (an ``ovstream run`` command), sample RSS each ``interval_s``; the per-process verdicts."""
    output.mkdir(parents=True, exist_ok=True)
    traces: dict[str, ProcessTrace] = {}
    log = open(output / "bench-soak.log", "wb")
    t0 = time.time()
    (output / "report.json").unlink(missing_ok=True)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    root = psutil.Process(proc.pid)
    next_report = t0 + 15
    try:
        while proc.poll() is None:
            now = time.time()
            for name, (pid, rss) in sample_tree(root).items():
                trace = traces.setdefault(name, ProcessTrace(name))
                if pid not in trace.pids:
                    trace.pids.append(pid)
                trace.samples.append((now, rss))
            if progress and now >= next_report:
                progress(f"soak: {now - t0:.0f} s, " + ", ".join(f"{n} {t.samples[-1][1] / (1 << 20):.0f} MiB"
                                                                  for n, t in traces.items()))
                next_report += 15
            if now - t0 > timeout_s:
                proc.terminate()
                break
            try:
                proc.wait(timeout=interval_s)
            except subprocess.TimeoutExpired:
                pass
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
    t_end = time.time()
    start, end, report = stream_window(output / "report.json", t0, t_end)
    verdicts = [trace.verdict(start, end) for trace in traces.values() if trace.samples]
    return {"command": " ".join(cmd), "exit_code": proc.returncode, "duration_s": round(t_end - t0, 1),
            "stream_s": round(end - start, 1), "throughput_fps": report.get("throughput_fps"),
            "accounting": report.get("accounting"), "interval_s": interval_s,
            "warmup_fraction": WARMUP_FRACTION, "tolerance_pct": TOLERANCE * 100, "processes": verdicts,
            "stable": bool(verdicts) and all(v.get("stable") is not False for v in verdicts)}


def stream_window(report_path: Path, t_start: float, t_end: float) -> tuple[float, float, dict]:
    """(start, end) unix times of the stream from the run report; the whole run without a report."""
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        start = float(report["timestamp"]) - float(report["duration_s"])
        frames = report["accounting"]["out"] + report["accounting"].get("errors", 0)
        end = start + frames / float(report["throughput_fps"])
        return start, min(end, t_end), report
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return t_start, t_end, {}


def soak_frames_to_loop(frames: int, video_frames: int = VIDEO_FRAMES) -> int:
    """How many plays of the video reach ``frames`` frames."""
    return max(1, math.ceil(frames / video_frames))
