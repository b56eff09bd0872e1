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

Every variant is counted in the same kind of window: it opens ``warmup_s`` after the run's streams
have all delivered a first result (a camera runs for hours: start-up is not what it sustains) and
lasts ``seconds``. Delivered FPS per stream = results in the window / its length; drops: those in
the window; CPU per frame = CPU seconds of the whole process tree in the window / frames delivered
in it; p95: end-to-end latency (capture to result), the engine's over its whole run (its histogram
is cumulative), the loop's over the window. The engine's counts come from its ``status.json``
and ``results.jsonl``: the results are the lines the file gained between the window's two ends (its size
taken at each: lines are written whole), the drops what ``status.json`` (rewritten every 0.5 s) counted
between them; then it is stopped as Ctrl-C stops it. Start-up is reported apart: seconds to the
first result of every stream.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from engine.io.run_folder import read_json_file
from engine.tools.bench.stats import Spread

SUSTAIN_FRACTION = 0.95
VARIANTS = {
    "engine": "ovstream run, N [[sources]] in one engine",
    "separate": "N single-stream ovstream run processes",
    "threaded": "one process: reader threads + pool + AsyncInferQueue",
    "budget": "ovstream run, N [[sources]], tracking, detect_every (a detection budget per stream)",
}
SAMPLED_VARIANTS = frozenset({"budget"})   # their detector sees a fraction of the frames: not compared per frame
DETECT_FPS = 5.0         # the budget variant's detections per second per stream (Frigate's default)
DEFAULT_SCHEDULE = (1, 2, 4, 6, 8, 10, 12, 16)
GIVE_UP_AFTER = 2        # consecutive unsustained stream counts before a variant stops climbing
WARMUP_S = 5.0           # the window opens this long after every stream's first result
START_TIMEOUT_S = 180.0  # a run whose streams have not all delivered by then failed


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
    cpu_s: float = 0.0                                    # the process tree's CPU in the window
    wall_s: float = 0.0
    error: str = ""
    window_s: float = 0.0                                 # the window's measured length (0: ``seconds``)
    p95_ms: float | None = None                          # end-to-end latency
    startup_s: float | None = None                       # to every stream's first result

    @property
    def per_stream_fps(self) -> list[float]:
        window = self.window_s or self.seconds
        return [d / window for d in self.delivered] if window > 0 else []

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
               "p95_ms": round(self.p95_ms, 1) if self.p95_ms is not None else None,
               "startup_s": round(self.startup_s, 2) if self.startup_s is not None else None,
               "sustained": self.sustained}
        if self.error:
            out["error"] = self.error
        return out


def _tree_cpu_s(pids: list[int]) -> float:
    """CPU seconds so far of these processes and all their descendants."""
    total = 0.0
    for pid in pids:
        try:
            procs = [psutil.Process(pid)]
            procs += procs[0].children(recursive=True)
        except psutil.Error:
            continue
        for proc in procs:
            try:
                t = proc.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                pass
    return total


def _model_line(model: str) -> str:
    return f'path = {json.dumps(model)}' if Path(model).suffix else f'name = {json.dumps(model)}'


def engine_config(video: Path, streams: int, model: str, device: str, output: Path, detect_every: int = 1) -> str:
    """The TOML of one engine run: ``streams`` camera-like copies of ``video``; with ``detect_every`` > 1
    tracking is on and the detector sees one frame in ``detect_every`` of each."""
    lines = ["[model]", _model_line(model), "", "[inference]", f"devices = [{json.dumps(device)}]", "",
             "[output]", f"dir = {json.dumps(str(output))}", "status = true", "", "[dashboard]", "enabled = false", ""]
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
                    every: int = 1) -> subprocess.Popen:
    """An ``ovstream run`` of ``streams`` cameras, until it is stopped."""
    output.mkdir(parents=True, exist_ok=True)
    for name in ("report.json", "status.json"):
        (output / name).unlink(missing_ok=True)
    config = output / "density.toml"
    config.write_text(engine_config(video, streams, model, device, output, every), encoding="utf-8")
    log = open(output / "bench-run.log", "wb")
    cmd = [sys.executable, "-m", "engine.cli", "run", str(config), "--no-dashboard"]
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def _all_delivering(status: dict | None, streams: int) -> bool:
    rows = (status or {}).get("streams") or {}
    return len(rows) == streams and all(int(r.get("out", 0)) > 0 for r in rows.values())


def _drops(status: dict) -> dict[str, int]:
    return {name: int(r.get("drops", 0)) for name, r in status["streams"].items()}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _results_between(path: Path, start: int, end: int) -> dict[str, int]:
    """Results per stream in the bytes ``start`` to ``end`` of a ``results.jsonl``."""
    with open(path, "rb") as fh:
        fh.seek(start)
        chunk = fh.read(end - start)
    counts: dict[str, int] = {}
    for line in chunk.splitlines():
        name = str(json.loads(line).get("stream", ""))
        counts[name] = counts.get(name, 0) + 1
    return counts


def measure_engines(trial: Trial, procs: list[subprocess.Popen], outs: list[Path], per_out: int,
                    warmup_s: float = WARMUP_S) -> Trial:
    """Count ``trial`` over its window from the engines' ``results.jsonl`` and ``status.json`` (see
    the module docstring), then stop them as Ctrl-C does."""
    t0 = time.perf_counter()
    pids = [p.pid for p in procs]
    try:
        started = None
        while started is None or time.perf_counter() < started + warmup_s:
            if started is None and all(_all_delivering(read_json_file(o / "status.json"), per_out) for o in outs):
                started = time.perf_counter()
                trial.startup_s = started - t0
            if any(p.poll() is not None for p in procs):
                raise RuntimeError("an engine exited before the window (see bench-run.log)")
            if time.perf_counter() - t0 > START_TIMEOUT_S:
                raise RuntimeError(f"not every stream delivered within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.05)
        first = [(_size(o / "results.jsonl"), read_json_file(o / "status.json") or {}) for o in outs]
        cpu0, w0 = _tree_cpu_s(pids), time.perf_counter()
        time.sleep(trial.seconds)
        last = [(_size(o / "results.jsonl"), read_json_file(o / "status.json") or {}) for o in outs]
        trial.cpu_s, trial.window_s = _tree_cpu_s(pids) - cpu0, time.perf_counter() - w0
        for o, (size0, status0), (size1, status1) in zip(outs, first, last):
            results, drops0, drops1 = _results_between(o / "results.jsonl", size0, size1), \
                _drops(status0), _drops(status1)
            for name in sorted(drops1):
                trial.delivered.append(results.get(name, 0))
                trial.drops.append(drops1[name] - drops0.get(name, 0))
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        trial.error = str(exc)
    finally:
        trial.error = _stop(procs) or trial.error
        trial.wall_s = time.perf_counter() - t0
    p95 = [((read_json_file(o / "report.json") or {}).get("latency_ms") or {}).get("end_to_end", {}).get("p95")
           for o in outs]
    trial.p95_ms = max((float(v) for v in p95 if v is not None), default=None)
    return trial


def _stop(procs: list[subprocess.Popen], wait_s: float = 60.0) -> str:
    """Stop the engines as Ctrl-C does; an error if one does not end by itself, or ends as a
    stopped run does not (0: it had ended, 130: stopped)."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    error = ""
    for proc in procs:
        try:
            proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            error = f"did not stop within {wait_s:.0f} s of SIGINT"
        if proc.returncode not in (0, 130) and not error:
            error = f"exit code {proc.returncode} (see bench-run.log)"
    return error


def run_engine(trial: Trial, video: Path, model: str, device: str, out: Path) -> Trial:
    """One engine serving all ``trial.streams`` streams (the budget variant: detecting
    :data:`DETECT_FPS` frames a second of each)."""
    every = detect_every(trial.target_fps) if trial.variant == "budget" else 1
    proc = _engine_process(video, trial.streams, model, device, out, every)
    return measure_engines(trial, [proc], [out], trial.streams)


def run_separate(trial: Trial, video: Path, model: str, device: str, out: Path) -> Trial:
    """``trial.streams`` single-stream engines started together."""
    outs = [out / f"s{i:02d}" for i in range(trial.streams)]
    procs = [_engine_process(video, 1, model, device, o) for o in outs]
    return measure_engines(trial, procs, outs, 1)


def run_threaded(trial: Trial, video: Path, model: str, device: str, out: Path) -> Trial:
    """The threaded single-process loop of :mod:`engine.tools.bench.density_loop`."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "engine.tools.bench.density_loop", "--video", str(video),
           "--streams", str(trial.streams), "--warmup", f"{WARMUP_S:g}",
           "--seconds", f"{trial.seconds:g}", "--fps", f"{trial.target_fps:g}", "--model", model,
           "--device", device]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=trial.seconds + WARMUP_S + START_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        trial.error = "timed out"
        return trial
    trial.wall_s = time.perf_counter() - t0
    (out / "bench-run.log").write_text(" ".join(cmd) + "\n" + proc.stdout + "\n" + proc.stderr, encoding="utf-8")
    try:
        result = json.loads(proc.stdout)
        trial.delivered, trial.drops = result["delivered"], result["drops"]
        trial.window_s, trial.cpu_s = result["window_s"], result["cpu_s"]
        trial.p95_ms, trial.startup_s = result["p95_ms"], result["startup_s"]
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
    out: dict = {"target_fps": fps, "seconds": seconds, "warmup_s": WARMUP_S, "schedule": list(schedule),
                 "repeats": repeats,
                 "sustain_fraction": SUSTAIN_FRACTION, "variants": {}, "trials": [t.to_dict() for t in trials]}
    for v in variants:
        rows: dict[int, dict[str, Any]] = {}
        for n in sorted({t.streams for t in trials if t.variant == v}):
            ts = [t for t in trials if t.variant == v and t.streams == n]
            ok = [t.to_dict() for t in ts if not t.error]
            spread = {k: Spread.of(d[k] for d in ok if d.get(k) is not None)
                      for k in ("min_fps", "median_fps", "cpu_ms_per_frame", "p95_ms", "startup_s")}
            rows[n] = {**{k: s.to_dict() if s else None for k, s in spread.items()},
                       "drops": sum(sum(t.drops) for t in ts), "sustained_runs": sum(t.sustained for t in ts),
                       "runs": len(ts), "errors": [t.error for t in ts if t.error]}
        best = max((n for n, r in rows.items() if r["sustained_runs"] * 2 > r["runs"]), default=0)
        out["variants"][v] = {"label": VARIANTS[v], "sustained_streams": best, "by_streams": rows}
    engine = out["variants"].get("engine", {}).get("sustained_streams")
    out["ratios"] = {f"engine/{v}": (round(engine / out["variants"][v]["sustained_streams"], 2)
                                     if engine is not None and out["variants"][v]["sustained_streams"] else None)
                     for v in variants if v != "engine" and v not in SAMPLED_VARIANTS}
    if "budget" in variants:                  # apart: it detects a fifth of the frames it delivers
        budget = out["variants"]["budget"]["sustained_streams"]
        out["detect_fps"] = DETECT_FPS
        out["ratios"]["budget/engine"] = round(budget / engine, 2) if engine else None
    return out
