"""(c)/(d) ``ovstream run`` as a user runs it, in a subprocess, and the nireq × streams × batch sweep.

The figures come from the run's own ``report.json`` (throughput since stream start, per-stage
latency). Start-up is measured apart: the subprocess's wall time minus the report's
``duration_s`` (which runs from the stream's start through shutdown), i.e. interpreter start,
preflight, process spawn, model compile and the READY handshake (plus writing the report).
"""
from __future__ import annotations

import itertools
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

STAGES = ("decode", "preprocess", "queue", "inference", "postprocess", "end_to_end")
DEFAULT_GRID = {"nireq": (2, 4, 8), "streams": (1, 2), "batch": (1, 4)}
FIXED_TUNED = {"nireq": 2, "streams": 1, "batch": 1}   # (d) without a sweep: one stream, two requests per worker


@dataclass
class EngineRun:
    """One ``ovstream run``: its command, exit code, and the figures of its report."""

    command: list[str]
    exit_code: int
    wall_s: float
    report: dict = field(default_factory=dict)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    @property
    def fps(self) -> float | None:
        return self.report.get("throughput_fps") if self.ok else None

    @property
    def frames(self) -> int:
        return int(self.report.get("accounting", {}).get("out", 0))

    @property
    def duration_s(self) -> float:
        return float(self.report.get("duration_s", 0.0))

    @property
    def startup_s(self) -> float | None:
        """Wall time before the stream started: interpreter, preflight, spawn, compile, handshake."""
        return round(self.wall_s - self.duration_s, 3) if self.ok else None

    def latency(self, stage: str, key: str = "median") -> float | None:
        return self.report.get("latency_ms", {}).get(stage, {}).get(key)

    def summary(self) -> dict:
        out = {"command": " ".join(self.command), "exit_code": self.exit_code, "wall_s": round(self.wall_s, 3)}
        if not self.ok:
            out["error"] = self.error
            return out
        acc = self.report.get("accounting", {})
        out.update({
            "fps": self.fps, "frames": self.frames, "stream_s": self.duration_s, "startup_s": self.startup_s,
            "fps_including_startup": round(self.frames / self.wall_s, 2) if self.wall_s else None,
            "accounting": acc,
            "latency_ms": {s: {k: v.get(k) for k in ("median", "p95", "avg", "count")}
                           for s, v in self.report.get("latency_ms", {}).items()},
            "devices": [{k: d.get(k) for k in ("name", "throughput_fps", "frames", "nireq")}
                        for d in self.report.get("devices", [])],
        })
        return out


def engine_command(source: str, model: str, output: Path, config: str | None = None,
                   devices: list[str] | None = None, nireq: int | None = None, streams: int | None = None,
                   batch: int | None = None, loop: int | None = None) -> list[str]:
    """The ``ovstream run`` command line (as ``python -m engine.cli run``) with the given flags."""
    cmd = [sys.executable, "-m", "engine.cli", "run"]
    if config:
        cmd.append(str(config))
    cmd += ["--source", str(source), "--model", str(model), "--output", str(output), "--no-dashboard"]
    for flag, value in (("--nireq", nireq), ("--streams", streams), ("--batch", batch), ("--loop", loop)):
        if value is not None:
            cmd += [flag, str(value)]
    for device in devices or []:
        cmd += ["--device", device]
    return cmd


def run_engine(cmd: list[str], output: Path, timeout_s: float = 600.0) -> EngineRun:
    """Run ``cmd``; read ``output/report.json``. A failure becomes an :class:`EngineRun` with ``error``."""
    output.mkdir(parents=True, exist_ok=True)
    report_path = output / "report.json"
    report_path.unlink(missing_ok=True)
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        _write_log(output, cmd, exc.stdout, exc.stderr)
        return EngineRun(cmd, -1, time.perf_counter() - t0, error=f"timed out after {timeout_s:.0f} s")
    wall = time.perf_counter() - t0
    _write_log(output, cmd, proc.stdout, proc.stderr)
    report: dict = {}
    error = ""
    if report_path.exists():
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
        except ValueError as exc:
            error = f"unreadable {report_path}: {exc}"
    if proc.returncode != 0 or not report:
        lines = [line.strip() for line in (proc.stderr or proc.stdout or "").strip().splitlines() if line.strip()]
        error = error or f"exit code {proc.returncode}: {' | '.join(lines[-3:])[:500] or 'no output'}"
        if not report:
            error += f" (no {report_path})"
    elif not report.get("throughput_fps"):
        error = f"report without throughput_fps ({report_path})"
    return EngineRun(cmd, proc.returncode, wall, report, error)


def _write_log(output: Path, cmd: list[str], stdout: str | bytes | None, stderr: str | bytes | None) -> None:
    def text(value: str | bytes | None) -> str:
        return value.decode(errors="replace") if isinstance(value, bytes) else (value or "")

    (output / "bench-run.log").write_text(" ".join(cmd) + "\n\n--- stdout\n" + text(stdout) +
                                          "\n--- stderr\n" + text(stderr), encoding="utf-8")


def sweep_grid(nireq: tuple[int, ...], streams: tuple[int, ...], batch: tuple[int, ...]) -> list[dict]:
    return [{"nireq": n, "streams": s, "batch": b} for n, s, b in itertools.product(nireq, streams, batch)]


def sweep(source: str, model: str, output: Path, devices: list[str], grid: list[dict], config: str | None = None,
          loop: int | None = None, workers: int = 1, progress=None) -> dict:
    """One run per device and grid point, with ``workers`` inference workers on that device (the
    layout the tuned run (d) uses); the best setting per device by throughput."""
    points = []
    best: dict[str, dict] = {}
    for device in devices:
        for point in grid:
            if progress:
                progress(f"sweep {device} nireq={point['nireq']} streams={point['streams']} batch={point['batch']}")
            name = f"{device.replace(':', '_')}-n{point['nireq']}-s{point['streams']}-b{point['batch']}"
            out = output / "sweep" / name
            run = run_engine(engine_command(source, model, out, config, [device] * workers, loop=loop, **point), out)
            row = {"device": device, "workers": workers, **point, "fps": run.fps, "p50_ms": run.latency("end_to_end"),
                   "p95_ms": run.latency("end_to_end", "p95"), "startup_s": run.startup_s}
            if run.error:
                row["error"] = run.error
            points.append(row)
            if run.fps and run.fps > best.get(device, {}).get("fps", 0.0):
                best[device] = row
    return {"grid": grid, "workers": workers, "points": points, "best": best}


def tuned_setting(sweep_result: dict | None, device: str) -> tuple[dict, str]:
    """(nireq/streams/batch for (d), where it came from): the sweep's best, else :data:`FIXED_TUNED`."""
    best = (sweep_result or {}).get("best", {}).get(device)
    if best:
        return {k: best[k] for k in ("nireq", "streams", "batch")}, "sweep"
    return dict(FIXED_TUNED), "fixed"
