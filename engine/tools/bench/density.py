"""Stream density: how many real-time streams this machine sustains, three ways, side by side.

Every stream is the same video looped and paced at its native frame rate, so it behaves exactly
as a camera does (drop-oldest under backpressure, counted). A run of N streams *sustains* real
time when every stream delivers at least :data:`SUSTAIN_FRACTION` of the target FPS with no
drops. For each N of a schedule, alternating and repeated:

  engine     one ``ovstream run`` with N ``[[sources]]`` (``live = "yes"``, ``realtime = true``)
  separate   N single-stream ``ovstream run`` processes at once
  threaded   :mod:`engine.tools.bench.density_loop`: one process, reader threads + a pool + AsyncInferQueue
  budget     ``engine`` with a detection budget: ``[tracking]`` on and ``detect_every`` = FPS / ``detect_fps``
             (the frames between get the tracker's predicted boxes); reported apart from the
             every-frame variants, with its own ratio ``budget/engine``

Delivered FPS per stream = results in the streaming window / its length (``--duration`` for the
engine runs, a window after a warm-up for the threaded loop). CPU per frame = CPU seconds of the
whole process tree (start-up included: what the machine spends) / frames delivered.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.tools.bench.stats import Spread

SUSTAIN_FRACTION = 0.95
VARIANTS = {
    "engine": "ovstream run, N [[sources]] in one engine",
    "separate": "N single-stream ovstream run processes",
    "threaded": "one process: reader threads + pool + AsyncInferQueue",
    "budget": "ovstream run, N [[sources]], tracking, detect_every (a detection budget per stream)",
}
DETECT_FPS = 5.0         # the budget variant's detections per second per stream (Frigate's default)
DEFAULT_SCHEDULE = (1, 2, 4, 6, 8, 10, 12, 16)
GIVE_UP_AFTER = 2        # consecutive unsustained stream counts before a variant stops climbing


@dataclass
class Trial:
    """One variant at one stream count: delivered FPS per stream, drops, CPU."""

    variant: str
    streams: int
    repeat: int
    seconds: float
    target_fps: float
    delivered: list[int] = field(default_factory=list)   # results per stream in the window
    drops: list[int] = field(default_factory=list)
    cpu_s: float = 0.0
    wall_s: float = 0.0
    error: str = ""

    @property
    def per_stream_fps(self) -> list[float]:
        return [d / self.seconds for d in self.delivered] if self.seconds > 0 else []

    @property
    def sustained(self) -> bool:
        """Every stream at ≥ 95 % of the target FPS, none dropping, all N present."""
        fps = self.per_stream_fps
        return (not self.error and len(fps) == self.streams and sum(self.drops) == 0
                and min(fps) >= SUSTAIN_FRACTION * self.target_fps)

    def to_dict(self) -> dict:
        fps = self.per_stream_fps
        frames = sum(self.delivered)
        out = {"variant": self.variant, "streams": self.streams, "repeat": self.repeat,
               "min_fps": round(min(fps), 2) if fps else None,
               "median_fps": round(sorted(fps)[len(fps) // 2], 2) if fps else None,
               "per_stream_fps": [round(v, 2) for v in fps], "drops": sum(self.drops), "frames": frames,
               "cpu_s": round(self.cpu_s, 2), "wall_s": round(self.wall_s, 2),
               "cpu_ms_per_frame": round(self.cpu_s * 1000 / frames, 2) if frames else None,
               "sustained": self.sustained}
        if self.error:
            out["error"] = self.error
        return out


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _model_line(model: str) -> str:
    return f'path = {json.dumps(model)}' if Path(model).suffix else f'name = {json.dumps(model)}'


def engine_config(video: Path, streams: int, model: str, device: str, output: Path, detect_every: int = 1) -> str:
    """The TOML of one engine run: ``streams`` camera-like copies of ``video``; with ``detect_every`` > 1
    tracking is on and the detector sees one frame in ``detect_every`` of each."""
    lines = ["[model]", _model_line(model), "", "[inference]", f"devices = [{json.dumps(device)}]", "",
             "[output]", f"dir = {json.dumps(str(output))}", "", "[dashboard]", "enabled = false", ""]
    if detect_every > 1:
        lines += ["[tracking]", "enabled = true", ""]
    for i in range(streams):
        lines += ["[[sources]]", f"uri = {json.dumps(str(video))}", f'name = "cam{i:02d}"', "loop = 1000000",
                  'live = "yes"', "realtime = true", *([f"detect_every = {detect_every}"] if detect_every > 1 else []),
                  ""]
    return "\n".join(lines)


def detect_every(fps: float, detect_fps: float = DETECT_FPS) -> int:
    """Frames per detection for a ``fps`` stream detected ``detect_fps`` times a second (at least 1)."""
    return max(1, round(fps / detect_fps))


def _engine_process(video: Path, streams: int, model: str, device: str, output: Path,
                    seconds: float, every: int = 1) -> subprocess.Popen:
    output.mkdir(parents=True, exist_ok=True)
    (output / "report.json").unlink(missing_ok=True)
    config = output / "density.toml"
    config.write_text(engine_config(video, streams, model, device, output, every), encoding="utf-8")
    log = open(output / "bench-run.log", "wb")
    cmd = [sys.executable, "-m", "engine.cli", "run", str(config), "--duration", f"{seconds:g}", "--no-dashboard"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def _stream_counts(output: Path) -> tuple[list[int], list[int], str]:
    """(delivered, drops) per stream from a finished run's report.json, or an error."""
    try:
        report = json.loads((output / "report.json").read_text(encoding="utf-8"))
        streams = report["streams"]
        names = sorted(streams)
        return ([int(streams[n]["out"]) for n in names], [int(streams[n].get("drops", 0)) for n in names], "")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [], [], f"no usable report in {output}: {type(exc).__name__}: {exc}"


def _wait(procs: list[subprocess.Popen], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    error = ""
    for proc in procs:
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code, error = -9, f"timed out after {timeout_s:.0f} s"
        if code != 0 and not error:
            error = f"exit code {code} (see bench-run.log)"
    return error


def run_engine(trial: Trial, video: Path, model: str, device: str, out: Path) -> Trial:
    """One engine serving all ``trial.streams`` streams (the budget variant: detecting
    :data:`DETECT_FPS` frames a second of each)."""
    cpu0, t0 = _children_cpu_s(), time.perf_counter()
    every = detect_every(trial.target_fps) if trial.variant == "budget" else 1
    proc = _engine_process(video, trial.streams, model, device, out, trial.seconds, every)
    trial.error = _wait([proc], trial.seconds + 180)
    trial.wall_s, trial.cpu_s = time.perf_counter() - t0, _children_cpu_s() - cpu0
    delivered, drops, error = _stream_counts(out)
    trial.delivered, trial.drops, trial.error = delivered, drops, trial.error or error
    return trial


def run_separate(trial: Trial, video: Path, model: str, device: str, out: Path) -> Trial:
    """``trial.streams`` single-stream engines started together."""
    cpu0, t0 = _children_cpu_s(), time.perf_counter()
    outs = [out / f"s{i:02d}" for i in range(trial.streams)]
    procs = [_engine_process(video, 1, model, device, o, trial.seconds) for o in outs]
    trial.error = _wait(procs, trial.seconds + 180)
    trial.wall_s, trial.cpu_s = time.perf_counter() - t0, _children_cpu_s() - cpu0
    for o in outs:
        delivered, drops, error = _stream_counts(o)
        trial.delivered += delivered
        trial.drops += drops
        trial.error = trial.error or error
    return trial


def run_threaded(trial: Trial, video: Path, model: str, device: str, out: Path) -> Trial:
    """The threaded single-process loop of :mod:`engine.tools.bench.density_loop`."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "engine.tools.bench.density_loop", "--video", str(video),
           "--streams", str(trial.streams),
           "--seconds", f"{trial.seconds:g}", "--fps", f"{trial.target_fps:g}", "--model", model,
           "--device", device]
    cpu0, t0 = _children_cpu_s(), time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=trial.seconds + 180)
    except subprocess.TimeoutExpired:
        trial.error = "timed out"
        return trial
    trial.wall_s, trial.cpu_s = time.perf_counter() - t0, _children_cpu_s() - cpu0
    (out / "bench-run.log").write_text(" ".join(cmd) + "\n" + proc.stdout + "\n" + proc.stderr, encoding="utf-8")
    try:
        result = json.loads(proc.stdout)
        trial.delivered, trial.drops = result["delivered"], result["drops"]
    except (ValueError, KeyError, TypeError):
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["no output"]
        trial.error = f"exit code {proc.returncode}: {tail[0][:300]}"
    return trial


RUNNERS = {"engine": run_engine, "separate": run_separate, "threaded": run_threaded, "budget": run_engine}


def density(video: Path, model: str, device: str, output: Path, fps: float, seconds: float,
            schedule: tuple[int, ...], repeats: int, variants: tuple[str, ...] = tuple(VARIANTS),
            progress=None) -> dict:
    """Climb ``schedule`` for every variant, alternating; a variant stops after
    :data:`GIVE_UP_AFTER` consecutive stream counts it did not sustain."""
    trials: list[Trial] = []
    failing = {v: 0 for v in variants}
    for n in schedule:
        active = [v for v in variants if failing[v] < GIVE_UP_AFTER]
        if not active:
            break
        passed = {v: 0 for v in active}
        for r in range(repeats):
            for v in active:
                if progress:
                    progress(f"density: {n} stream(s), {v}, repeat {r + 1}/{repeats}")
                trial = RUNNERS[v](Trial(v, n, r, seconds, fps), video, model, device,
                                   output / "density" / f"{v}-n{n:02d}-r{r + 1}")
                trials.append(trial)
                passed[v] += trial.sustained
                if progress:
                    t = trial.to_dict()
                    progress(f"  → min {t['min_fps']} / median {t['median_fps']} FPS per stream, "
                             f"{t['drops']} drops, {t['cpu_ms_per_frame']} CPU ms/frame"
                             + (f", error: {trial.error}" if trial.error else ""))
        for v in active:
            failing[v] = 0 if passed[v] * 2 > repeats else failing[v] + 1
    return summarize(trials, variants, fps, seconds, schedule, repeats)


def summarize(trials: list[Trial], variants: tuple[str, ...], fps: float, seconds: float,
              schedule: tuple[int, ...], repeats: int) -> dict:
    """Per variant and stream count: medians and ranges over repeats, and the largest N sustained
    (by a majority of its repeats)."""
    out: dict = {"target_fps": fps, "seconds": seconds, "schedule": list(schedule), "repeats": repeats,
                 "sustain_fraction": SUSTAIN_FRACTION, "variants": {}, "trials": [t.to_dict() for t in trials]}
    for v in variants:
        rows: dict[int, dict[str, Any]] = {}
        for n in sorted({t.streams for t in trials if t.variant == v}):
            ts = [t for t in trials if t.variant == v and t.streams == n]
            ok = [t.to_dict() for t in ts if not t.error]
            spread = {k: Spread.of(d[k] for d in ok) for k in ("min_fps", "median_fps", "cpu_ms_per_frame")}
            rows[n] = {**{k: s.to_dict() if s else None for k, s in spread.items()},
                       "drops": sum(sum(t.drops) for t in ts), "sustained_runs": sum(t.sustained for t in ts),
                       "runs": len(ts), "errors": [t.error for t in ts if t.error]}
        best = max((n for n, r in rows.items() if r["sustained_runs"] * 2 > r["runs"]), default=0)
        out["variants"][v] = {"label": VARIANTS[v], "sustained_streams": best, "by_streams": rows}
    engine = out["variants"].get("engine", {}).get("sustained_streams")
    out["ratios"] = {f"engine/{v}": (round(engine / out["variants"][v]["sustained_streams"], 2)
                                     if engine is not None and out["variants"][v]["sustained_streams"] else None)
                     for v in variants if v not in ("engine", "budget")}
    if "budget" in variants:                  # apart: it detects a fifth of the frames it delivers
        budget = out["variants"]["budget"]["sustained_streams"]
        out["detect_fps"] = DETECT_FPS
        out["ratios"]["budget/engine"] = round(budget / engine, 2) if engine else None
    return out
