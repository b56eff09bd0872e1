"""``ovstream bench --versus``: the engine against the threaded single-process script, side by side.

Each job is a subprocess started exactly as a user starts it: ``ovstream run --no-dashboard`` or
``python -m engine.tools.bench.threaded`` (:mod:`engine.tools.bench.threaded`). The bench watches it from
outside, the same way for both:

- **whole process**: wall time from ``Popen`` to exit, CPU seconds of the process and every
  process it started and reaped (``RUSAGE_CHILDREN``);
- **time to first result**: from ``Popen`` until the first line of its ``results.jsonl`` is on
  disk (both flush every result line as they write it);
- **steady state**: the file's line count and every process's CPU time sampled every
  :data:`SAMPLE_S`; the window runs from the sample where :data:`WARM_FRACTION` of the frames are
  written to the last sample before the final count, so start-up and the pipeline's filling are
  outside it: FPS = frames in the window / its length, CPU per frame per process likewise.

The engine's CPU per frame is split per process (:func:`engine_profile`, from each stage's
start-up done to its exit, as ``report.json`` counts it) into the work the script does too
(decode, resize, the adapter's parsing: the stages' own busy time; inference: core-ms per frame
that a benchmark_app-style probe of the same compiled model spends, :func:`inference_probe`) and
the rest, the engine's own overhead (messages, copies, polling, stats, OpenVINO threads spinning
while idle). The inference worker also counts its OpenVINO threads' CPU apart from its own
loop's, so its overhead splits into the loop's and what OpenVINO spends beyond the probe, alone
on the machine, when it shares the cores with the other stages. The sum of the work is the floor
a single process would reach with no overhead at all: where the script's CPU per frame is at that
floor and every core is busy, the engine's steady FPS can at most equal the script's.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from engine.control.launch import stage_of
from engine.tools.bench.stats import Spread, median_of, ratio

SAMPLE_S = 0.05            # line count + per-process CPU sample period
WARM_FRACTION = 0.1        # the steady window starts once this share of the frames is written
WORK_STAGES = ("decoder", "preprocessor", "postprocessor")
WORK_CPU = {"decoder": "read + decode", "preprocessor": "resize", "postprocessor": "parse + write JSONL"}


@dataclass
class Sample:
    """One look at a running job: seconds since start, lines written, CPU seconds per process."""

    t: float
    lines: int
    cpu: dict[str, float]


@dataclass
class Job:
    """One job run and watched: exit code, wall, CPU of the whole tree, the samples."""

    name: str
    exit_code: int
    wall_s: float
    cpu_s: float
    first_result_s: float | None
    last_result_s: float | None = None        # the shutdown follows: wall_s - last_result_s
    samples: list[Sample] = field(default_factory=list)
    error: str = ""

    @property
    def frames(self) -> int:
        return self.samples[-1].lines if self.samples else 0

    def steady(self, expected: int, warm: float = WARM_FRACTION) -> dict | None:
        return steady_window(self.samples, expected, warm)


def process_name(proc: psutil.Process, root_pid: int, root_name: str) -> str:
    """``supervisor`` / a stage's name (e.g. decoder-0) / the script's name."""
    if proc.pid == root_pid:
        return root_name
    try:
        cmd = proc.cmdline()
    except (psutil.Error, OSError):
        return f"pid{proc.pid}"
    return stage_of(cmd) or f"pid{proc.pid}"


def count_lines(path: Path, state: dict) -> int:
    """Lines of ``path`` so far, reading only what was appended since the last call (``state``)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(state.get("offset", 0))
            data = fh.read()
    except OSError:
        return state.get("lines", 0)
    complete = data.rfind(b"\n") + 1           # a half-written line waits for the next look
    state["offset"] = state.get("offset", 0) + complete
    state["lines"] = state.get("lines", 0) + data.count(b"\n", 0, complete)
    return state["lines"]


def run_job(name: str, cmd: list[str], results: Path, log: Path, root_name: str,
            timeout_s: float = 900.0, sample_s: float = SAMPLE_S) -> Job:
    """Run ``cmd``, watching ``results`` (removed first) and the CPU of every process of the tree."""
    results.unlink(missing_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(log, "wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    samples: list[Sample] = []
    first: list[float] = []
    last: list[float] = [0.0, 0]              # time the line count last grew, and that count
    stop = threading.Event()

    def watch() -> None:
        state: dict = {}
        root = psutil.Process(proc.pid)
        procs: dict[int, tuple[psutil.Process, str]] = {}
        cpu: dict[str, float] = {}
        next_cpu = 0.0
        while not stop.is_set():
            now = time.perf_counter() - t0
            lines = count_lines(results, state)
            if lines and not first:
                first.append(now)
            if lines > last[1]:
                last[:] = [now, lines]
            if now >= next_cpu:            # CPU of every process, the last value kept after it exits
                try:
                    for p in [root, *root.children(recursive=True)]:
                        if p.pid not in procs or procs[p.pid][1].startswith("pid"):   # seen before its exec
                            procs[p.pid] = (p, process_name(p, proc.pid, root_name))
                except (psutil.Error, OSError):
                    pass
                for pid, (p, pname) in list(procs.items()):
                    try:
                        times = p.cpu_times()
                        cpu[pname] = times.user + times.system
                    except (psutil.Error, OSError):
                        procs.pop(pid)
                samples.append(Sample(now, lines, dict(cpu)))
                next_cpu = now + sample_s
            stop.wait(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    error = ""
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
        error = f"timed out after {timeout_s:.0f} s"
    wall = time.perf_counter() - t0
    stop.set()
    watcher.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = count_lines(results, {})
    if samples and samples[-1].lines != lines:            # lines flushed at the very end
        samples.append(Sample(wall, lines, dict(samples[-1].cpu)))
    if code != 0 and not error:
        tail = log.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-2:]
        error = f"exit code {code}: {' | '.join(tail)[:300]}"
    if lines > last[1]:
        last[:] = [wall, lines]
    return Job(name, code, wall, cpu_s, first[0] if first else None, last[0] if lines else None, samples, error)


def steady_window(samples: list[Sample], expected: int, warm: float = WARM_FRACTION) -> dict | None:
    """FPS and CPU per frame per process between the sample where ``warm`` of ``expected`` frames
    were written and the first sample with the final count; None if the window is empty."""
    if not samples:
        return None
    final = samples[-1].lines
    start = next((s for s in samples if s.lines >= max(1, warm * expected)), None)
    end = next((s for s in samples if s.lines == final), None)
    if start is None or end is None or end.t <= start.t or end.lines <= start.lines:
        return None
    frames = end.lines - start.lines
    seconds = end.t - start.t
    cpu_ms = {name: (end.cpu.get(name, 0.0) - start.cpu.get(name, 0.0)) * 1000 / frames
              for name in end.cpu}
    return {"frames": frames, "seconds": round(seconds, 4), "fps": round(frames / seconds, 2),
            "cpu_ms_per_frame": {k: round(v, 3) for k, v in sorted(cpu_ms.items())},
            "cpu_ms_per_frame_total": round(sum(cpu_ms.values()), 3)}


def engine_profile(steady: dict, report: dict, inference_core_ms: float | None,
                   inference_openvino_ms: float | None = None) -> list[dict]:
    """Per engine process, per frame of the run: its CPU from the end of its start-up (the
    ``ready_cpu_s`` a stage reports at its handshake: imports, compile) to its exit, the work the
    threaded script does too, and the rest, the engine's overhead. Work and total cover the same
    span, so one cannot drift from the other. Work is what the stage itself counts
    (``work_cpu_us``: CPU time of reading + decoding, resizing, the adapter's parsing and writing
    the records, as the script writes its own); inference's is the probe's core-ms per frame. The
    supervisor, which reports no stats of its own, counts with its steady-window CPU (``steady``).
    An inference row also says how much more its OpenVINO threads spent than the probe's
    (``inference_openvino_ms``: the probe's CPU outside its own Python thread) as
    ``openvino_beyond_probe_ms``; the rest of its overhead is its own loop's. A stage that
    restarted counts its last instance's CPU only (the bench's runs have none). Processes that
    spent nothing are left out."""
    frames = int(report.get("accounting", {}).get("out", 0))      # every frame, of every process
    inference_frames = sum(int(p.get("counters", {}).get("frames", 0)) for p in report.get("processes", [])
                           if p.get("role") == "inference")
    rows = []
    for proc in report.get("processes", []):
        name, role = proc.get("name", ""), proc.get("role", "")
        counters, gauges = proc.get("counters", {}), proc.get("gauges", {})
        if role == "supervisor":
            total = steady.get("cpu_ms_per_frame", {}).get(name)
        elif frames and proc.get("cpu_s") is not None and "ready_cpu_s" in gauges:
            total = (proc["cpu_s"] - gauges["ready_cpu_s"]) * 1000 / frames
        else:
            total = None
        if total is None:
            continue
        work_name, work = "", 0.0
        if role in WORK_STAGES:
            work_name = WORK_CPU[role]
            work = int(counters.get("work_cpu_us", 0)) / 1000 / frames
        share = int(counters.get("frames", 0)) / inference_frames if inference_frames else 1.0
        if role == "inference" and inference_core_ms is not None:
            work_name = "inference (probe)"
            work = inference_core_ms * share
        row = {"process": name, "core_ms_per_frame": round(total, 3), "work": work_name,
               "work_ms": round(work, 3), "overhead_ms": round(total - work, 3)}
        if role == "inference" and work_name and inference_openvino_ms is not None \
                and {"own_cpu_s", "ready_own_cpu_s"} <= set(gauges):
            own = (gauges["own_cpu_s"] - gauges["ready_own_cpu_s"]) * 1000 / frames
            row["openvino_beyond_probe_ms"] = round(total - own - inference_openvino_ms * share, 3)
        rows.append(row)
    return rows


def inference_probe(model_cfg, inference_cfg, device: str, images: list[Path], seconds: float = 3.0,
                    batch: int = 1) -> dict:
    """What inference alone costs per frame, as benchmark_app measures it: the model compiled as the
    engine compiles it for ``batch`` frames per request, every request kept busy on real
    letterboxed pixels; CPU seconds of this process (OpenVINO's threads included) per frame."""
    import numpy as np
    import openvino as ov

    from engine.core.geometry import Geometry
    from engine.io.sources import load_image
    from engine.model.prepare import compile_model, prepare_model, read_model
    from workers.runtime import own_threads_cpu_s

    core = ov.Core()
    model, info = prepare_model(read_model(core, model_cfg.path), model_cfg, batch)
    compiled = compile_model(core, model, device, inference_cfg)
    nireq = inference_cfg.nireq or int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
    frame, error, _ = load_image(images[0])
    if frame is None:
        raise RuntimeError(f"cannot read {images[0]}: {error}")
    pixels = np.empty((batch, info.height, info.width, 3), np.uint8)
    pre = model_cfg.preprocess
    Geometry.plan(frame.shape[1], frame.shape[0], info.width, info.height, pre.resize, pre.crop) \
        .resize_into(frame, pixels[0], pre.interpolation, pre.pad)
    pixels[1:] = pixels[0]
    queue = ov.AsyncInferQueue(compiled, nireq)
    for _ in range(nireq * 4):                    # warm-up
        queue.start_async({0: pixels})
    queue.wait_all()
    frames = 0
    cpu0, own0, t0 = time.process_time(), own_threads_cpu_s(), time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        queue.start_async({0: pixels})
        frames += batch
    queue.wait_all()
    wall, cpu, own = time.perf_counter() - t0, time.process_time() - cpu0, own_threads_cpu_s() - own0
    return {"frames": frames, "fps": round(frames / wall, 2), "core_ms_per_frame": round(cpu * 1000 / frames, 3),
            "openvino_core_ms_per_frame": round((cpu - own) * 1000 / frames, 3),
            "nireq": nireq, "batch": batch, "seconds": round(wall, 3)}


SCRIPTS = ("threaded", "plain")      # the script with the engine's OpenVINO settings; with OpenVINO's defaults


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Median and min–max of each figure per side, the engine/script ratio of the medians for each
    script variant (``engine_over_threaded``, ``engine_over_plain``), and the ratios of each
    alternating pair (engine run *i* / script run *i*, measured back to back, so a load that comes
    and goes moves both): their median and min–max (``paired_ratio``, ``paired_ratio_plain``)."""
    keys = ("job_wall_s", "job_cpu_s", "first_result_s", "job_stream_s", "job_shutdown_s", "steady_fps",
            "steady_cpu_ms_per_frame")
    out: dict = {}
    for key in keys:
        row: dict[str, Any] = {}
        for side in ("engine", *SCRIPTS):
            spread = Spread.of(r.get(key) for r in runs.get(side, []))
            row[side] = spread.to_dict() if spread else None
        for script, suffix in zip(SCRIPTS, ("", "_plain")):
            e, t = (row[s]["median"] if row[s] else None for s in ("engine", script))
            value = ratio(e, t)
            row[f"engine_over_{script}"] = None if value is None else round(value, 3)
            pairs = Spread.of(ratio(a.get(key), b.get(key))
                              for a, b in zip(runs.get("engine", []), runs.get(script, [])))
            row[f"paired_ratio{suffix}"] = pairs.to_dict() if pairs else None
        out[key] = row
    return out


TARGETS = {"steady_fps": (">=", 1.0), "steady_fps_plain": (">=", 1.05), "job_wall_s": ("<", 1.0),
           "job_wall_s_plain": ("<", 1.0), "first_result_s": ("<=", 0.8), "overhead_ms_per_frame": ("<=", 0.5),
           "live_latency_ratio": ("<=", 1.5)}


def verdicts(summary: dict, overhead_ms: float | None, live_ratio: float | None = None) -> dict:
    """Each of the issue's targets: the figure it is judged on and whether it is met."""
    def over(key: str, script: str) -> float | None:
        return summary.get(key, {}).get(f"engine_over_{script}")

    first = ((summary.get("first_result_s") or {}).get("engine") or {}).get("median")
    figures = {"steady_fps": over("steady_fps", "threaded"), "steady_fps_plain": over("steady_fps", "plain"),
               "job_wall_s": over("job_wall_s", "threaded"), "job_wall_s_plain": over("job_wall_s", "plain"),
               "first_result_s": first, "overhead_ms_per_frame": overhead_ms, "live_latency_ratio": live_ratio}
    out = {}
    for key, (op, target) in TARGETS.items():
        value = figures[key]
        met = None if value is None else (value >= target if op == ">=" else value < target if op == "<"
                                          else value <= target)
        out[key] = {"value": value, "target": f"{op} {target}", "met": met}
    return out


def compare(commands: dict[str, Callable[[Path, int], list[str]]], out: Path, images: int, repeats: int,
            steady_loops: int, progress: Callable[[str], None]) -> dict:
    """Alternate the sides (``engine`` and the script variants), ``repeats`` times: the whole job
    (one pass) and a steady run (``steady_loops`` passes). ``commands[side](output, loops)`` gives
    a side's command line."""
    runs: dict[str, list[dict]] = {side: [] for side in commands}
    reports: list[tuple[dict, dict]] = []          # engine steady windows with their report
    for r in range(repeats):
        for side, make in commands.items():
            root = "supervisor" if side == "engine" else "threaded"
            figures: dict = {}
            for kind, loops in (("job", 1), ("steady", steady_loops)):
                folder = out / "versus" / f"{side}-{kind}-r{r + 1}"
                progress(f"versus repeat {r + 1}/{repeats}: {side} {kind} ({images * loops} frames)")
                job = run_job(side, make(folder, loops), folder / "results.jsonl", folder / "bench-run.log", root)
                if job.error:
                    figures.setdefault("errors", []).append(f"{kind}: {job.error}")
                    progress(f"versus: {side} {kind} failed: {job.error}")
                    continue
                if kind == "job":
                    figures.update(job_wall_s=round(job.wall_s, 3), job_cpu_s=round(job.cpu_s, 3),
                                   first_result_s=None if job.first_result_s is None else round(job.first_result_s, 3),
                                   job_stream_s=None if job.last_result_s is None or job.first_result_s is None
                                   else round(job.last_result_s - job.first_result_s, 3),
                                   job_shutdown_s=None if job.last_result_s is None
                                   else round(job.wall_s - job.last_result_s, 3),
                                   job_frames=job.frames)
                    continue
                steady = job.steady(images * loops)
                if steady is None:
                    figures.setdefault("errors", []).append("steady: empty window")
                    continue
                figures.update(steady_fps=steady["fps"], steady_cpu_ms_per_frame=steady["cpu_ms_per_frame_total"],
                               steady=steady)
                if side == "engine":
                    try:
                        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
                    except (OSError, ValueError):
                        report = {}
                    reports.append((steady, report))
            runs[side].append(figures)
    return {"runs": runs, "summary": summarize(runs), "engine_reports": reports}


def profile_summary(reports: list[tuple[dict, dict]], inference_core_ms: float | None,
                    inference_openvino_ms: float | None = None) -> dict:
    """The per-process profile, median over the repeats, and the engine's total overhead per frame."""
    per: dict[str, list[dict]] = {}
    for steady, report in reports:
        for row in engine_profile(steady, report, inference_core_ms, inference_openvino_ms):
            per.setdefault(row["process"], []).append(row)
    rows = []
    for name, items in per.items():
        keys = ("core_ms_per_frame", "work_ms", "overhead_ms") + \
            (("openvino_beyond_probe_ms",) if all("openvino_beyond_probe_ms" in i for i in items) else ())
        rows.append({"process": name, "work": items[0]["work"],
                     **{k: round(median_of(i[k] for i in items), 3) for k in keys}})
    order = ("supervisor", "decoder", "preprocessor", "inference", "postprocessor")
    rows.sort(key=lambda r: next((i for i, o in enumerate(order) if r["process"].startswith(o)), len(order)))
    if not rows:
        return {"rows": [], "overhead_ms_per_frame": None, "core_ms_per_frame": None, "work_ms_per_frame": None}
    beyond = [r["openvino_beyond_probe_ms"] for r in rows if "openvino_beyond_probe_ms" in r]
    return {"rows": rows, "overhead_ms_per_frame": round(sum(r["overhead_ms"] for r in rows), 3),
            "openvino_beyond_probe_ms_per_frame": round(sum(beyond), 3) if beyond else None,
            "work_ms_per_frame": round(sum(r["work_ms"] for r in rows), 3),
            "core_ms_per_frame": round(sum(r["core_ms_per_frame"] for r in rows), 3)}


def zero_overhead_ceiling(profile: dict, summary: dict) -> dict[str, float]:
    """Per script, the most the engine's steady FPS could be over the script's with no overhead at
    all, while every core is busy: the script's CPU per frame over the unavoidable work's (no frame
    costs less than its work)."""
    work = profile.get("work_ms_per_frame")
    spent = summary.get("steady_cpu_ms_per_frame", {})
    return {script: round(value, 3) for script in SCRIPTS
            if (value := ratio((spent.get(script) or {}).get("median"), work)) is not None}


LIVE_STAGES = ("decode", "preprocess", "inference", "postprocess")


def live_figures(report: dict) -> dict | None:
    """A live run's median end-to-end latency against the sum of its per-stage medians (frames
    that do not wait in queues: a ratio near 1; the issue's target: <= 1.5)."""
    latency = report.get("latency_ms", {})
    stages = {s: (latency.get(s) or {}).get("median") for s in LIVE_STAGES}
    e2e = (latency.get("end_to_end") or {}).get("median")
    if e2e is None or any(v is None for v in stages.values()):
        return None
    total = sum(v for v in stages.values() if v is not None)      # none is, as checked above
    return {"stage_p50_ms": stages, "sum_p50_ms": round(total, 3), "end_to_end_p50_ms": e2e,
            "queue_p50_ms": (latency.get("queue") or {}).get("median"),
            "end_to_end_p95_ms": (latency.get("end_to_end") or {}).get("p95"),
            "ratio": round(e2e / total, 3) if total else None, "frames": report.get("accounting", {}).get("out")}


def live_latency(video: Path, model: str, device: str, out: Path, seconds: float) -> dict:
    """One camera-like stream (``video`` looped at its native rate, ``live``, ``realtime``) for
    ``seconds``: :func:`live_figures` of its report, or an error."""
    from engine.tools.bench.density import engine_config
    from engine.tools.bench.engine_runs import run_engine

    out.mkdir(parents=True, exist_ok=True)
    config = out / "live.toml"
    config.write_text(engine_config(video, 1, model, device, out), encoding="utf-8")
    run = run_engine([sys.executable, "-m", "engine.cli", "run", str(config), "--duration", f"{seconds:g}",
                      "--no-dashboard"], out)
    figures = live_figures(run.report) if run.report else None
    if figures is None:
        return {"error": run.error or "no latency figures in the report"}
    return figures


def threaded_command(images: str, model: str, output: Path, config: str | None, loops: int, device: str,
                     settings: str = "engine") -> list[str]:
    """The threaded script's command line; ``settings``: ``engine`` (the config's OpenVINO hint, as
    the engine compiles) or ``default`` (OpenVINO's defaults, as ``core.compile_model(model, device)``)."""
    cmd = [sys.executable, "-m", "engine.tools.bench.threaded", "--images", images, "--model", model,
           "--output", str(output), "--loop", str(loops), "--device", device, "--settings", settings]
    return cmd + (["--config", str(config)] if config else [])
