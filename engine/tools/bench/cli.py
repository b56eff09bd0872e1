"""`ovstream bench`: the codelab's loops, the engine, and benchmark_app's ceiling, side by side.

Variants, run alternating (a, b, c, d, e, then again) ``--repeats`` times; each figure is the
median with its min–max:

  (a) single-process sync loop       imread → resize → infer() → adapter       (codelab sync sample)
  (b) single-process async loop      the same work, N requests, "wait completion" pattern
  (c) ``ovstream run``, its defaults  subprocess; figures from its report.json; start-up apart
  (d) ``ovstream run``, tuned         two workers, nireq/streams/batch from ``--sweep`` (else fixed)
  (e) benchmark_app                   inference only: the device's ceiling

``--sweep`` adds a nireq × streams × batch grid per device, ``--transport`` the one-hop transport
micro-benchmark, ``--soak N`` a memory soak of N frames. Results: OUT/bench.json, OUT/bench.png.
``--versus`` instead runs the engine against the threaded single-process script a user would write
(:mod:`engine.tools.bench.versus`): whole job, time to first result, steady state and a CPU profile per
process: OUT/versus.json. ``--density`` instead measures how many real-time streams the engine, separate
engine processes and a threaded single-process loop sustain (:mod:`engine.tools.bench.density`):
OUT/density.json, OUT/density.png. ``--churn N`` instead runs ``ovstream serve`` through N stream add/remove
cycles over HTTP (:mod:`engine.tools.bench.churn`): RSS and open files before and after, OUT/churn.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from rich.console import Console, JustifyMethod
from rich.table import Table

from engine.config import load_config
from engine.core import paths
from engine.core.errors import ConfigError
from engine.model.detect import detect_model
from engine.tools.bench.density import DEFAULT_SCHEDULE, SAMPLED_VARIANTS
from engine.tools.bench.stats import Spread, fmt, median_of, ratio

VARIANTS = {
    "a": ("sync loop", "single process, sync infer() per frame (codelab sync sample)"),
    "b": ("async loop", "single process, N requests, wait-completion (codelab async)"),
    "c": ("engine default", "ovstream run, defaults"),
    "d": ("engine tuned", "ovstream run, two workers, tuned nireq/streams/batch"),
    "e": ("benchmark_app", "benchmark_app -hint throughput: inference only"),
}
RATIOS = (("c/a", "c", "a", None), ("c/b", "c", "b", 1.5), ("c/e", "c", "e", None), ("d/e", "d", "e", 0.9))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="TOML config (default: configs/default.toml)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats of every variant (>= 1)")
    parser.add_argument("--images", default="", help="image folder (default: the codelab's 100 COCO images from "
                                                     "the shared folder, else data/samples)")
    parser.add_argument("--model", help="registry name or model file (default: the config's model)")
    parser.add_argument("--device", default="CPU", help="OpenVINO device (default: CPU)")
    parser.add_argument("--output", default="runs/bench", help="output folder (bench.json, bench.png, runs/)")
    parser.add_argument("--passes", type=int, default=3,
                        help="passes over the images per measurement, for every variant (engine: --loop)")
    parser.add_argument("--variants", default="a,b,c,d,e", help="which of a,b,c,d,e to run")
    parser.add_argument("--nireq", type=int, default=0, help="requests of the async loop (b) (0: device optimum)")
    parser.add_argument("--workers", type=int, default=2, help="inference workers of the tuned run (d)")
    parser.add_argument("--bench-time", type=int, default=10, help="benchmark_app -t seconds (e)")
    parser.add_argument("--sweep", action="store_true", help="nireq × streams × batch grid for the engine")
    parser.add_argument("--sweep-nireq", default="2,4,8")
    parser.add_argument("--sweep-streams", default="1,2")
    parser.add_argument("--sweep-batch", default="1,4")
    parser.add_argument("--transport", action="store_true", help="one-hop transport micro-benchmark")
    parser.add_argument("--transport-scale", type=float, default=1.0, help="scale the transport frame counts")
    parser.add_argument("--soak", type=int, metavar="N", default=0, help="memory soak over N frames of video")
    parser.add_argument("--churn", type=int, metavar="N", default=0,
                        help="ovstream serve through N stream add/remove cycles: RSS and open files before/after")
    parser.add_argument("--density", action="store_true",
                        help="streams sustained in real time: engine vs separate processes vs threaded loop")
    parser.add_argument("--versus", action="store_true",
                        help="engine vs the threaded single-process script: whole job, first result, steady "
                             "state, CPU profile per process")
    parser.add_argument("--steady-loops", type=int, default=10,
                        help="versus: passes over the images for the steady-state runs (default 10)")
    parser.add_argument("--probe-seconds", type=float, default=3.0,
                        help="versus: seconds of the inference-only probe (core-ms per frame)")
    parser.add_argument("--live-seconds", type=float, default=10.0,
                        help="versus: seconds of the live-latency run per repeat (a video at --fps; 0: none)")
    parser.add_argument("--fps", type=float, default=30.0, help="density: each stream's native frame rate")
    parser.add_argument("--density-streams", default=",".join(map(str, DEFAULT_SCHEDULE)),
                        help="density: stream counts to climb")
    parser.add_argument("--density-seconds", type=float, default=10.0, help="density: streaming seconds per run")
    parser.add_argument("--density-variants", default="engine,separate,threaded,budget",
                        help="density: which of engine, separate, threaded, budget (tracking with detect_every)")


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, not '{text}'") from None
    if not values or min(values) < 1:
        raise ConfigError(f"{what} needs integers >= 1, not '{text}'")
    return values


def machine_info() -> dict:
    import openvino as ov
    import psutil

    cpu = platform.processor() or platform.machine()
    try:
        cpu = ov.Core().get_property("CPU", "FULL_DEVICE_NAME")
    except Exception:  # informational only
        pass
    return {"cpu": cpu, "logical_cores": os.cpu_count(), "physical_cores": psutil.cpu_count(logical=False),
            "memory_gib": round(psutil.virtual_memory().total / (1 << 30), 1), "openvino": ov.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
            # how busy the machine was before the bench started (other users' work shares these cores)
            "cpu_busy_pct_before": psutil.cpu_percent(interval=1.0)}


class Bench:
    """One ``ovstream bench`` invocation: settings, results, output."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        if args.repeats < 1 or args.passes < 1 or args.workers < 1:
            raise ConfigError("--repeats, --passes and --workers must be >= 1")
        self.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ConfigError(f"--variants: unknown {', '.join(unknown)} (choose from {', '.join(VARIANTS)})")
        images = args.images or str(paths.default_images())
        overrides: dict = {"sources": [{"uri": images}]}
        if args.model:
            key = "path" if Path(args.model).suffix else "name"
            overrides["model"] = {key: args.model}
        self.cfg = load_config(args.config, overrides, detect=detect_model)
        self.images_dir = paths.resolve(images)
        if not self.images_dir.is_dir():
            raise ConfigError(f"--images: no such folder {images}")
        self.model_arg = args.model or self.cfg.model.name
        self.out = Path(args.output)
        self.out.mkdir(parents=True, exist_ok=True)
        self.console = Console()
        if not self.console.is_terminal:            # piped or logged: wide enough for the tables
            self.console = Console(width=160)
        self.log = Console(stderr=True)
        self.result: dict = {"format": "ovstream-bench/1", "timestamp": time.time()}

    def progress(self, text: str) -> None:
        self.log.print(f"[dim]bench:[/dim] {text}", highlight=False)

    # ---- variants -----------------------------------------------------------------------------
    def run(self) -> int:
        args = self.args
        self.result["machine"] = machine_info()
        if args.churn:
            return self._churn()
        if args.density:
            return self._density()
        if args.versus:
            return self._versus()
        self.result["settings"] = {
            "model": self.model_arg, "model_path": self.cfg.model.path, "adapter": self.cfg.model.adapter,
            "device": args.device, "images": str(self.images_dir), "passes": args.passes, "repeats": args.repeats,
            "variants": self.variants, "config": args.config or "configs/default.toml"}
        self.progress(f"{self.result['machine']['cpu']}, {os.cpu_count()} logical cores; model "
                      f"{self.model_arg}; {args.repeats} repeats × {args.passes} passes over {self.images_dir}")
        if args.sweep:
            self.result["sweep"] = self._sweep()
        tuned, source = self._tuned()
        self.result["tuned"] = {**tuned, "workers": args.workers, "source": source}
        runs: dict[str, list[dict]] = {v: [] for v in self.variants}
        for r in range(args.repeats):
            for v in self.variants:
                self.progress(f"repeat {r + 1}/{args.repeats}: ({v}) {VARIANTS[v][0]}")
                runs[v].append(self._measure(v, r, tuned))
        self.result["variants"] = {v: self._aggregate(v, runs[v]) for v in self.variants}
        self.result["ratios"] = self._ratios()
        self.result["budget"] = self._budget()
        if args.transport:
            self.result["transport"] = self._transport()
        if args.soak:
            self.result["soak"] = self._soak()
        self.result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        failed = any(v.get("errors") for v in self.result["variants"].values())
        self._write()
        return 1 if failed else 0

    def _measure(self, variant: str, repeat: int, tuned: dict) -> dict:
        try:
            if variant in ("a", "b"):
                return self._loop(variant)
            if variant == "e":
                return self._benchmark_app(repeat)
            return self._engine(variant, repeat, tuned)
        except Exception as exc:  # one failed measurement is recorded, the bench goes on
            self.log.print(f"[red]bench: ({variant}) failed: {type(exc).__name__}: {exc}[/red]", highlight=False)
            return {"error": f"{type(exc).__name__}: {exc}"}

    def _loop(self, variant: str) -> dict:
        from engine.tools.bench.loops import Prepared, async_loop, list_images, sync_loop

        prepared = Prepared(self.cfg.model, self.args.device)
        images = list_images(self.images_dir)
        if variant == "a":
            result = sync_loop(prepared, images, passes=self.args.passes)
        else:
            result = async_loop(prepared, images, nireq=self.args.nireq, passes=self.args.passes)
        s = result.summary()
        return {"fps": s["fps"], "p50_ms": s["latency_ms"]["median"], "p95_ms": s["latency_ms"]["p95"],
                "frames": s["frames"], "stage_ms_mean": s["stage_ms"], "nireq": s["nireq"],
                "properties": s["properties"], "failures": s["failures"]}

    def _benchmark_app(self, repeat: int) -> dict:
        import openvino as ov

        from engine.model.prepare import input_info, read_model
        from engine.tools.bench.ceiling import run_benchmark_app, shape_args

        info = input_info(read_model(ov.Core(), self.cfg.model.path), self.cfg.model.params)
        extra = shape_args(self.cfg.model.path, info.height, info.width)
        res, cmd, wall = run_benchmark_app(self.cfg.model.path, self.args.device, self.args.bench_time, extra,
                                           log=self.out / "runs" / f"e-r{repeat + 1}.log")
        return {"fps": res.throughput_fps, "p50_ms": res.latency_ms.get("median"), "p95_ms": None,
                "command": " ".join(cmd), "wall_s": round(wall, 2), **res.to_dict()}

    def _engine(self, variant: str, repeat: int, tuned: dict) -> dict:
        from engine.tools.bench.engine_runs import STAGES, engine_command, run_engine

        out = self.out / "runs" / f"{variant}-r{repeat + 1}"
        loop = self.args.passes if self.args.passes > 1 else None
        if variant == "c":
            cmd = engine_command(str(self.images_dir), self.model_arg, out, self.args.config, loop=loop)
        else:
            cmd = engine_command(str(self.images_dir), self.model_arg, out, self.args.config,
                                 [self.args.device] * self.args.workers, loop=loop, **tuned)
        run = run_engine(cmd, out)
        if run.error:
            raise RuntimeError(run.error)
        s = run.summary()
        return {"fps": run.fps, "p50_ms": run.latency("end_to_end"), "p95_ms": run.latency("end_to_end", "p95"),
                "startup_s": run.startup_s, "stage_ms": {st: run.latency(st) for st in STAGES if run.latency(st)},
                **{k: s[k] for k in ("command", "frames", "stream_s", "wall_s", "fps_including_startup",
                                     "accounting", "devices")}}

    def _aggregate(self, variant: str, runs: list[dict]) -> dict:
        ok = [r for r in runs if "error" not in r]
        short, label = VARIANTS[variant]
        out: dict[str, Any] = {"short": short, "label": label, "runs": runs,
                               "errors": [r["error"] for r in runs if "error" in r]}
        for key in ("fps", "p50_ms", "p95_ms", "startup_s"):
            spread = Spread.of(r.get(key) for r in ok)
            out[key] = spread.to_dict() if spread else None
        if any("stage_ms" in r for r in ok):
            stages = {s for r in ok for s in r.get("stage_ms", {})}
            out["stage_ms"] = {s: median_of(r.get("stage_ms", {}).get(s) for r in ok) for s in stages}
        if any("stage_ms_mean" in r for r in ok):
            stages = {s for r in ok for s in r.get("stage_ms_mean", {})}
            out["loop_step_ms"] = {s: round(median_of(r["stage_ms_mean"].get(s) for r in ok), 3)
                                   for s in stages}
        return out

    def _median(self, variant: str, key: str = "fps") -> float | None:
        v = self.result.get("variants", {}).get(variant) or {}
        return (v.get(key) or {}).get("median")

    def _ratios(self) -> dict:
        out = {}
        for name, num, den, target in RATIOS:
            value = ratio(self._median(num), self._median(den))
            out[name] = {"value": None if value is None else round(value, 3), "target": target,
                         "met": None if value is None or target is None else value >= target}
        return out

    def _budget(self) -> dict:
        """Why the engine cannot reach benchmark_app here: core-milliseconds each frame needs.

        Inference costs ``cores × 1000 / fps(e)`` core-ms per frame (benchmark_app keeps every core
        busy); read, resize and parse cost what the sync loop measured (single-threaded). Their sum
        bounds any pipeline on this machine at ``cores × 1000 / sum`` frames/s, before any
        inter-process overhead."""
        cores = os.cpu_count() or 1
        steps = (self.result["variants"].get("a") or {}).get("loop_step_ms") or {}
        e_fps = self._median("e")
        if not steps or not e_fps:
            return {}
        infer_core_ms = cores * 1000 / e_fps
        host_ms = sum(steps.get(s, 0.0) for s in ("read", "resize", "parse"))
        bound = cores * 1000 / (host_ms + infer_core_ms)
        engine = {k: (self.result["variants"].get(k) or {}).get("stage_ms") for k in ("c", "d")}
        return {"cores": cores, "read_ms": steps.get("read"), "resize_ms": steps.get("resize"),
                "parse_ms": steps.get("parse"), "sync_infer_ms": steps.get("infer"),
                "inference_core_ms": round(infer_core_ms, 3), "host_core_ms": round(host_ms, 3),
                "cpu_bound_fps": round(bound, 1), "cpu_bound_over_e": round(bound / e_fps, 3),
                "engine_stage_ms": {k: v for k, v in engine.items() if v}}

    # ---- sweep, transport, soak ---------------------------------------------------------------
    def _sweep(self) -> dict:
        from engine.tools.bench.engine_runs import sweep, sweep_grid

        a = self.args
        grid = sweep_grid(_ints(a.sweep_nireq, "--sweep-nireq"), _ints(a.sweep_streams, "--sweep-streams"),
                          _ints(a.sweep_batch, "--sweep-batch"))
        self.progress(f"sweep: {len(grid)} settings, {a.workers} worker(s) on {a.device}")
        return sweep(str(self.images_dir), self.model_arg, self.out, [a.device], grid, a.config,
                     loop=a.passes if a.passes > 1 else None, workers=a.workers, progress=self.progress)

    def _tuned(self) -> tuple[dict, str]:
        from engine.tools.bench.engine_runs import tuned_setting

        found = self.result.get("sweep")
        source_note = ""
        if found is None:
            previous = self.out / "bench.json"
            try:
                old = json.loads(previous.read_text(encoding="utf-8"))
                if old.get("settings", {}).get("model") == self.model_arg and old.get("sweep"):
                    found, source_note = old["sweep"], f" ({previous})"
            except (OSError, ValueError):
                pass
        setting, source = tuned_setting(found, self.args.device)
        return setting, source + (source_note if source == "sweep" else "")

    def _transport(self) -> dict:
        from engine.tools.bench.transport import WINDOW, run_transport, summarize

        runs = run_transport(self.args.repeats, scale=self.args.transport_scale, progress=self.progress)
        return {"window": WINDOW, "rows": summarize(runs), "runs": [r.to_dict() for r in runs]}

    def _soak(self) -> dict:
        from engine.tools.bench.engine_runs import engine_command
        from engine.tools.bench.loops import list_images
        from engine.tools.bench.soak import VIDEO_FRAMES, soak, soak_frames_to_loop, write_video

        frames = self.args.soak
        video = write_video(self.out / "soak" / "synthetic", list_images(self.images_dir))
        loop = soak_frames_to_loop(frames)
        out = self.out / "soak" / "run"
        cmd = engine_command(str(video), self.model_arg, out, self.args.config, loop=loop)
        self.progress(f"soak: {VIDEO_FRAMES}-frame video × {loop} = {VIDEO_FRAMES * loop} frames")
        result = soak(cmd, out, progress=self.progress)
        result["frames"] = VIDEO_FRAMES * loop
        result["video"] = str(video)
        return result

    def _churn(self) -> int:
        from engine.tools.bench.churn import churn

        result = churn(self.args.churn, self.images_dir, self.model_arg, self.out / "churn", self.progress)
        result["machine"] = self.result.get("machine")
        (self.out / "churn.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        b, a = result["before"], result["after"]
        self.console.print(f"[bold]churn[/bold]: {result['cycles']} add/remove cycles in {result['seconds']} s, "
                           f"{result['failed']} failed, {result['recycles']} pipeline restarts; RSS "
                           f"{b['rss_mib']} → {a['rss_mib']} MiB, open files {b['fds']} → {a['fds']}; "
                           f"exit code {result['exit_code']}", highlight=False)
        for name, row in a["processes"].items():
            was = b["processes"].get(name, {})
            self.console.print(f"  {name:<14} RSS MiB {was.get('rss_mib', '—')} → {row['rss_mib']}  "
                               f"fds {was.get('fds', '—')} → {row['fds']}", highlight=False)
        return 1 if result["failed"] or result["exit_code"] else 0

    def _density(self) -> int:
        from engine.tools.bench.bound import judge, measure_bound
        from engine.tools.bench.density import VARIANTS, density
        from engine.tools.bench.loops import list_images
        from engine.tools.bench.plot import plot_density
        from engine.tools.bench.soak import write_video

        a = self.args
        if a.fps <= 0 or a.density_seconds <= 0:
            raise ConfigError("--fps and --density-seconds must be > 0")
        schedule = _ints(a.density_streams, "--density-streams")
        variants = tuple(v.strip() for v in a.density_variants.split(",") if v.strip())
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown or not variants:
            raise ConfigError(f"--density-variants takes some of {', '.join(VARIANTS)}, not '{a.density_variants}'")
        video = write_video(self.out / "density" / "clip", list_images(self.images_dir), fps=a.fps)
        self.progress(f"density: {video.name} at {a.fps:g} FPS per stream, {a.density_seconds:g} s per run, "
                      f"streams {schedule}, {a.repeats} repeats, model {self.model_arg}")
        self.result["settings"] = {"model": self.model_arg, "device": a.device, "video": str(video),
                                   "repeats": a.repeats}
        self.progress("density: the machine's bound (decode, resize, benchmark_app, parse, each alone)")
        bound = measure_bound(video, self.cfg.model, a.device, a.fps, self.out / "density" / "bound")
        self.result["density"] = density(video, self.model_arg, a.device, self.out, a.fps, a.density_seconds,
                                         schedule, a.repeats, variants, progress=self.progress)
        self.result["density"].update(judge(self.result["density"], bound))
        self.result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        path = self.out / "density.json"
        path.write_text(json.dumps(self.result, indent=2, default=str), encoding="utf-8")
        png = None
        try:
            png = plot_density(self.result, self.out / "density.png")
        except ImportError:
            self.log.print("bench: matplotlib is not installed; no plot (pip install matplotlib)")
        render_density(self.result, self.console)
        self.console.print(f"results: {path}" + (f"   plot: {png}" if png else ""))
        return 0

    def _versus(self) -> int:
        from engine.tools.bench.engine_runs import engine_command
        from engine.tools.bench.loops import list_images
        from engine.tools.bench.versus import (
            compare,
            inference_probe,
            profile_summary,
            threaded_command,
            verdicts,
            zero_overhead_ceiling,
        )

        a = self.args
        if a.steady_loops < 1 or a.probe_seconds <= 0 or a.live_seconds < 0 or a.fps <= 0:
            raise ConfigError("--steady-loops must be >= 1, --probe-seconds and --fps > 0, --live-seconds >= 0")
        images = list_images(self.images_dir)
        model = self.model_arg
        self.result["settings"] = {"model": model, "device": a.device, "images": str(self.images_dir),
                                   "frames": len(images),
                                   "repeats": a.repeats, "steady_loops": a.steady_loops,
                                   "config": a.config or "configs/default.toml"}
        self.progress(f"versus: model {model}, {len(images)} images, {a.repeats} repeats; steady runs "
                      f"{a.steady_loops} passes; engine, threaded script (engine's OpenVINO settings) and plain "
                      f"script (OpenVINO's defaults) alternating")
        from engine.control.preflight import preflight
        _, batch = preflight(self.cfg)              # the frames per request the engine will use
        self.progress(f"versus: inference-only probe, batch {batch}, {a.probe_seconds:g} s")
        probe = inference_probe(self.cfg.model, self.cfg.inference, a.device, images, a.probe_seconds, batch)
        images_dir = str(self.images_dir)
        result = compare(
            {"engine": lambda out, loops: engine_command(images_dir, model, out, a.config,
                                                         loop=loops if loops > 1 else None),
             "threaded": lambda out, loops: threaded_command(images_dir, model, out, a.config, loops, a.device),
             "plain": lambda out, loops: threaded_command(images_dir, model, out, a.config, loops, a.device,
                                                          settings="default")},
            self.out, len(images), a.repeats, a.steady_loops, self.progress)
        profile = profile_summary(result.pop("engine_reports"), probe["core_ms_per_frame"],
                                  probe["openvino_core_ms_per_frame"])
        profile["zero_overhead_ceiling"] = zero_overhead_ceiling(profile, result["summary"])
        live = self._live(images) if a.live_seconds > 0 else None
        self.result["versus"] = {**result, "probe": probe, "profile": profile, "live": live,
                                 "targets": verdicts(result["summary"], profile["overhead_ms_per_frame"],
                                                     (live or {}).get("ratio"))}
        self.result["machine"]["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        path = self.out / "versus.json"
        path.write_text(json.dumps(self.result, indent=2, default=str), encoding="utf-8")
        render_versus(self.result, self.console)
        self.console.print(f"results: {path}")
        failed = any(r.get("errors") for side in result["runs"].values() for r in side)
        return 1 if failed else 0

    def _live(self, images: list) -> dict:
        """Live-source latency: one camera-like stream per repeat; medians over the repeats."""
        from engine.tools.bench.soak import write_video
        from engine.tools.bench.versus import live_latency

        a = self.args
        video = write_video(self.out / "live" / "clip", images, fps=a.fps)
        runs = []
        for r in range(a.repeats):
            self.progress(f"versus: live latency {r + 1}/{a.repeats}, {a.live_seconds:g} s at {a.fps:g} FPS")
            runs.append(live_latency(video, self.model_arg, a.device, self.out / "live" / f"r{r + 1}", a.live_seconds))
        ok = [r for r in runs if "error" not in r]
        out = {"fps": a.fps, "seconds": a.live_seconds, "runs": runs}
        for key in ("ratio", "end_to_end_p50_ms", "sum_p50_ms", "queue_p50_ms"):
            spread = Spread.of(r.get(key) for r in ok)
            out[key] = round(spread.median, 3) if spread else None
        return out

    # ---- output -------------------------------------------------------------------------------
    def _write(self) -> None:
        from engine.tools.bench.plot import plot_bench

        path = self.out / "bench.json"
        path.write_text(json.dumps(self.result, indent=2, default=str), encoding="utf-8")
        png = None
        try:
            png = plot_bench(self.result, self.out / "bench.png")
        except ImportError:
            self.log.print("bench: matplotlib is not installed; no plot (pip install matplotlib)")
        render(self.result, self.console)
        self.console.print(f"results: {path}" + (f"   plot: {png}" if png else ""))


def render(result: dict, console: Console) -> None:
    """The tables of a bench.json dict."""
    m = result.get("machine", {})
    s = result.get("settings", {})
    console.print(f"[bold]ovstream bench[/bold] — {m.get('cpu')}, {m.get('logical_cores')} logical cores "
                  f"({m.get('physical_cores')} physical), OpenVINO {m.get('openvino')}; model {s.get('model')} "
                  f"on {s.get('device')}; {s.get('repeats')} repeats × {s.get('passes')} passes over "
                  f"{s.get('images')}; machine {fmt(m.get('cpu_busy_pct_before'), 0)}% busy before the start, "
                  f"load average {m.get('load_avg_at_start', ['?'])[0]} → {m.get('load_avg_at_end', ['?'])[0]}")
    table = Table(title="Throughput and end-to-end latency (median of repeats, min–max)")
    columns: tuple[tuple[str, JustifyMethod], ...] = (
        ("variant", "left"), ("what", "left"), ("FPS", "right"), ("min–max", "right"),
        ("p50 ms", "right"), ("p95 ms", "right"), ("start-up s", "right"), ("notes", "left"))
    for col, justify in columns:
        table.add_column(col, justify=justify)
    tuned = result.get("tuned", {})
    for key, v in result.get("variants", {}).items():
        fps = v.get("fps") or {}
        runs = [r for r in v.get("runs", []) if "error" not in r]
        note = ""
        if key == "b" and runs:
            note = f"nireq {runs[0].get('nireq')}"
        elif key == "d":
            note = (f"{tuned.get('workers')}× nireq {tuned.get('nireq')} streams {tuned.get('streams')} "
                    f"batch {tuned.get('batch')} ({tuned.get('source')})")
        if key in ("c", "d") and runs:
            with_startup = Spread.of(r.get("fps_including_startup") for r in runs)
            note += ("; " if note else "") + f"{fmt(with_startup.median if with_startup else None)} FPS incl. start-up"
        elif key == "e" and runs:
            note = f"{runs[0].get('nireq')} req, {runs[0].get('streams')} streams; latency per request"
        if v.get("errors"):
            note = f"[red]{len(v['errors'])} failed: {v['errors'][0][:80]}[/red] " + note
        table.add_row(f"({key})", v.get("short", ""), fmt(fps.get("median")),
                      f"{fmt(fps.get('min'))}–{fmt(fps.get('max'))}" if fps else "—",
                      fmt((v.get("p50_ms") or {}).get("median"), 2), fmt((v.get("p95_ms") or {}).get("median"), 2),
                      fmt((v.get("startup_s") or {}).get("median"), 2), note)
    console.print(table)
    ratios = Table(title="Ratios (of medians)")
    for col in ("ratio", "value", "target", "met"):
        ratios.add_column(col)
    for name, r in result.get("ratios", {}).items():
        met = "—" if r["met"] is None else ("[green]yes[/green]" if r["met"] else "[red]no[/red]")
        ratios.add_row(name, fmt(r["value"], 2, "×"), f"≥ {r['target']}×" if r["target"] else "—", met)
    console.print(ratios)
    budget = result.get("budget") or {}
    if budget:
        bt = Table(title=f"CPU budget per frame on {budget['cores']} cores (what bounds (c)/(d))")
        for col in ("step", "ms/frame", "source"):
            bt.add_column(col)
        bt.add_row("read (cv2.imread, JPEG decode)", fmt(budget["read_ms"], 2), "sync loop (a)")
        bt.add_row("resize (letterbox)", fmt(budget["resize_ms"], 2), "sync loop (a)")
        bt.add_row("parse (adapter)", fmt(budget["parse_ms"], 2), "sync loop (a)")
        bt.add_row("inference, core-ms", fmt(budget["inference_core_ms"], 2), "cores × 1000 / FPS (e)")
        bt.add_row("inference, sync wall ms", fmt(budget["sync_infer_ms"], 2), "sync loop (a)")
        bt.add_row("[bold]bound[/bold]", f"{fmt(budget['cpu_bound_fps'])} FPS",
                   f"= {fmt(budget['cpu_bound_over_e'], 2)}× (e); cores × 1000 / (read+resize+parse+inference)")
        for key, stages in budget.get("engine_stage_ms", {}).items():
            bt.add_row(f"engine ({key}) stages p50", " ".join(f"{k} {fmt(v, 2)}" for k, v in stages.items()),
                       "report.json")
        console.print(bt)
    sweep = result.get("sweep")
    if sweep:
        st = Table(title=f"Sweep ({sweep.get('workers', 1)} worker(s) on the device, one run per setting)")
        for col in ("device", "nireq", "streams", "batch", "FPS", "p50 ms", "p95 ms"):
            st.add_column(col, justify="right")
        best = sweep.get("best", {})
        for p in sweep.get("points", []):
            mark = "[bold green]" if best.get(p["device"]) == p else ""
            st.add_row(p["device"], str(p["nireq"]), str(p["streams"]), str(p["batch"]),
                       f"{mark}{fmt(p.get('fps'))}" if p.get("fps") else f"[red]{p.get('error', '')[:40]}[/red]",
                       fmt(p.get("p50_ms"), 2), fmt(p.get("p95_ms"), 2))
        console.print(st)
    transport = result.get("transport")
    if transport:
        tt = Table(title=f"One-hop transport, producer → consumer process (≤ {transport['window']} frames in flight)")
        for col in ("frame", "method", "frames", "frames/s", "µs/frame", "min–max µs", "p50 latency µs", "ok"):
            tt.add_column(col, justify="right")
        for row in transport["rows"]:
            us = row["us_per_frame"]
            tt.add_row(row["size"], row["method"], str(row["frames"]), fmt(row["fps"]["median"], 0),
                       fmt(us["median"], 1), f"{fmt(us['min'], 1)}–{fmt(us['max'], 1)}",
                       fmt(row["latency_p50_us"]["median"], 0), "yes" if row["checksum_ok"] else "[red]NO[/red]")
        console.print(tt)
    soak = result.get("soak")
    if soak:
        console.print(f"[bold]soak[/bold]: {soak['frames']} frames, run {soak['duration_s']} s (stream "
                      f"{soak.get('stream_s')} s, {fmt(soak.get('throughput_fps'))} FPS), exit code "
                      f"{soak['exit_code']}; RSS within ±{soak['tolerance_pct']:.0f}% after warm-up "
                      f"({soak['warmup_fraction']:.0%} of the stream): {'yes' if soak['stable'] else 'NO'}")
        for p in soak["processes"]:
            verdict = {True: "stable", False: "[red]NOT stable[/red]", None: "n/a"}[p.get("stable")]
            console.print(f"  {p['name']:<14} RSS MiB first {p['first_mib']:.1f}  last {p['last_mib']:.1f}  "
                          f"max {p['max_mib']:.1f}  after warm-up {p.get('after_warmup_mib', '—')}  "
                          f"stream end {p.get('end_mib', '—')}  drift {p.get('drift_pct', '—')}%  "
                          f"range {p.get('range_pct', '—')}%  {verdict}", highlight=False)


def render_versus(result: dict, console: Console) -> None:
    """The tables of a versus.json dict: engine vs threaded script, the CPU profile, the targets."""
    v, m, s = result["versus"], result.get("machine", {}), result.get("settings", {})
    console.print(f"[bold]ovstream bench --versus[/bold] — {m.get('cpu')}, {m.get('logical_cores')} logical cores, "
                  f"OpenVINO {m.get('openvino')}; model {s.get('model')} on {s.get('device')}; {s.get('frames')} "
                  f"images (steady: × {s.get('steady_loops')}); {s.get('repeats')} alternating repeats; machine "
                  f"{fmt(m.get('cpu_busy_pct_before'), 0)}% busy before the start, load average "
                  f"{m.get('load_avg_at_start', ['?'])[0]} → {m.get('load_avg_at_end', ['?'])[0]}")
    table = Table(title="Engine vs the threaded single-process script with the engine's OpenVINO settings "
                        "(threaded) and with OpenVINO's defaults (plain); median of repeats, min–max")
    for col in ("figure", "engine", "min–max", "threaded", "min–max", "plain", "min–max", "engine / threaded",
                "paired (min–max)", "engine / plain", "paired (min–max)"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    labels = {"job_wall_s": ("whole job wall s", 2), "job_cpu_s": ("whole job CPU s", 2),
              "first_result_s": ("time to first result s", 3), "job_stream_s": ("  first → last result s", 3),
              "job_shutdown_s": ("  last result → exit s", 3), "steady_fps": ("steady-state FPS", 1),
              "steady_cpu_ms_per_frame": ("steady CPU core-ms/frame", 2)}
    for key, row in v["summary"].items():
        label, digits = labels.get(key, (key, 2))
        cells = [label]
        for side in ("engine", "threaded", "plain"):
            sp = row.get(side)
            cells += [fmt(sp["median"], digits), f"{fmt(sp['min'], digits)}–{fmt(sp['max'], digits)}"] if sp \
                else ["—", "—"]
        for script, pair_key in (("threaded", "paired_ratio"), ("plain", "paired_ratio_plain")):
            cells.append(fmt(row.get(f"engine_over_{script}"), 3, "×"))
            pair = row.get(pair_key)
            cells.append(f"{fmt(pair['median'], 3, '×')} ({fmt(pair['min'], 3)}–{fmt(pair['max'], 3)})" if pair
                         else "—")
        table.add_row(*cells)
    console.print(table)
    probe = v.get("probe") or {}
    prof = v.get("profile") or {}
    pt = Table(title=f"Engine CPU per frame, per process, from its start-up done to its exit (core-ms; "
                     f"the supervisor: steady window; inference work = "
                     f"{fmt(probe.get('core_ms_per_frame'), 2)} core-ms/frame of an inference-only probe, "
                     f"{fmt(probe.get('fps'))} FPS)")
    for col in ("process", "core-ms/frame", "unavoidable work", "work ms", "engine overhead ms"):
        pt.add_column(col, justify="left" if col in ("process", "unavoidable work") else "right")
    for row in prof.get("rows", []):
        pt.add_row(row["process"], fmt(row["core_ms_per_frame"], 2), row["work"] or "—", fmt(row["work_ms"], 2),
                   fmt(row["overhead_ms"], 2))
    pt.add_row("[bold]total[/bold]", fmt(prof.get("core_ms_per_frame"), 2), "", fmt(prof.get("work_ms_per_frame"), 2),
               f"[bold]{fmt(prof.get('overhead_ms_per_frame'), 2)}[/bold]")
    console.print(pt)
    for line in profile_notes(prof):
        console.print(line)
    live = v.get("live")
    if live:
        lt = Table(title=f"Live source: one stream at {fmt(live.get('fps'), 0)} FPS, realtime, "
                         f"{fmt(live.get('seconds'), 0)} s per repeat (p50 ms per run)")
        for col in ("run", "decode", "preprocess", "inference", "postprocess", "sum", "queue", "end-to-end",
                    "e2e / sum"):
            lt.add_column(col, justify="right")
        for i, r in enumerate(live.get("runs", []), 1):
            if "error" in r:
                lt.add_row(str(i), f"[red]{r['error'][:80]}[/red]", *[""] * 7)
                continue
            st = r["stage_p50_ms"]
            lt.add_row(str(i), *(fmt(st[k], 2) for k in ("decode", "preprocess", "inference", "postprocess")),
                       fmt(r["sum_p50_ms"], 2), fmt(r.get("queue_p50_ms"), 2), fmt(r["end_to_end_p50_ms"], 2),
                       fmt(r["ratio"], 2, "×"))
        console.print(lt)
    tt = Table(title="Targets")
    for col in ("target", "value", "wanted", "met"):
        tt.add_column(col)
    names = {"steady_fps": "steady FPS engine/threaded", "steady_fps_plain": "steady FPS engine/plain",
             "job_wall_s": "whole job wall engine/threaded", "job_wall_s_plain": "whole job wall engine/plain",
             "first_result_s": "engine time to first result s",
             "overhead_ms_per_frame": "engine overhead core-ms/frame",
             "live_latency_ratio": "live e2e p50 / sum of stage p50s"}
    for key, t in v.get("targets", {}).items():
        met = "—" if t["met"] is None else ("[green]yes[/green]" if t["met"] else "[red]no[/red]")
        tt.add_row(names.get(key, key), fmt(t["value"], 3), t["target"], met)
    console.print(tt)
    errors = [f"{side}: {e}" for side, runs in v["runs"].items() for r in runs for e in r.get("errors", [])]
    for e in errors:
        console.print(f"[red]{e[:200]}[/red]")


def profile_notes(profile: dict) -> list[str]:
    """What the profile's totals mean: the overhead's parts, and the ceiling it leaves."""
    notes = []
    beyond, overhead = profile.get("openvino_beyond_probe_ms_per_frame"), profile.get("overhead_ms_per_frame")
    if beyond is not None and overhead is not None:
        notes.append(f"of the overhead, {fmt(beyond, 2)} core-ms/frame is OpenVINO's threads spending more in the "
                     f"engine than in the probe alone (sharing the cores), {fmt(overhead - beyond, 2)} the stages' "
                     f"own loops (messages, polling, stats)")
    for script, ceiling in (profile.get("zero_overhead_ceiling") or {}).items():
        notes.append(f"zero-overhead ceiling, steady FPS engine/{script} on busy cores: {fmt(ceiling, 3, '×')} "
                     f"(the {script} script's core-ms/frame over the unavoidable work's)")
    return notes


def render_density(result: dict, console: Console) -> None:
    """The density tables of a density.json dict."""
    d = result["density"]
    m, s = result.get("machine", {}), result.get("settings", {})
    console.print(f"[bold]ovstream bench --density[/bold] — {m.get('cpu')}, {m.get('logical_cores')} logical "
                  f"cores, OpenVINO {m.get('openvino')}; model {s.get('model')} on {s.get('device')}; each stream "
                  f"{d['target_fps']:g} FPS (a looped video at its native rate), {d['seconds']:g} s per run, "
                  f"{d['repeats']} repeats; sustained = every stream ≥ {d['sustain_fraction']:.0%} of "
                  f"{d['target_fps']:g} FPS with no drops, counted from {d.get('warmup_s', 0):g} s after every "
                  f"stream's first result; p95: end-to-end latency; load average "
                  f"{m.get('load_avg_at_start', ['?'])[0]} → {m.get('load_avg_at_end', ['?'])[0]}")
    table = Table(title="Delivered FPS per stream (slowest stream, median of repeats, min–max) by stream count")
    table.add_column("streams", justify="right")
    for v in d["variants"]:
        table.add_column(f"{v}: FPS", justify="right")
        table.add_column("drops", justify="right")
        table.add_column("CPU ms/frame", justify="right")
        table.add_column("p95 ms", justify="right")
    counts = sorted({n for v in d["variants"].values() for n in v["by_streams"]}, key=int)
    for n in counts:
        cells = [str(n)]
        for v in d["variants"].values():
            row = v["by_streams"].get(n)
            if row is None:
                cells += ["—", "", "", ""]
                continue
            fps = row["min_fps"] or {}
            mark = "[green]" if row["sustained_runs"] * 2 > row["runs"] else "[red]"
            cells.append(f"{mark}{fmt(fps.get('median'))}[/] ({fmt(fps.get('min'))}–{fmt(fps.get('max'))})"
                         if fps else f"[red]{(row['errors'] or ['failed'])[0][:30]}[/red]")
            cells.append(str(row["drops"]))
            cells.append(fmt((row["cpu_ms_per_frame"] or {}).get("median"), 2))
            cells.append(fmt((row.get("p95_ms") or {}).get("median"), 0))
        table.add_row(*cells)
    console.print(table)
    startup = {v: [r["startup_s"]["median"] for r in x["by_streams"].values() if r.get("startup_s")]
               for v, x in d["variants"].items()}
    console.print("start-up, seconds to every stream's first result (median over the stream counts; not in the "
                  "window): " + ", ".join(f"{v} {fmt(sorted(s)[len(s) // 2], 1)}" for v, s in startup.items() if s))
    sustained = ", ".join(f"{v} {x['sustained_streams']}" for v, x in d["variants"].items()
                          if v not in SAMPLED_VARIANTS)
    ratios = ", ".join(f"{k} {fmt(r, 2, '×')}" for k, r in d["ratios"].items() if k != "budget/engine")
    console.print(f"[bold]streams sustained at {d['target_fps']:g} FPS[/bold]: {sustained}   ({ratios})")
    bound = d.get("bound")
    if bound:
        console.print(f"[bold]the machine's bound[/bold]: {bound['streams']:.1f} streams = {bound['cores']} cores ÷ "
                      f"({d['target_fps']:g} FPS × {bound['frame_ms']:.2f} core-ms per frame: decode "
                      f"{bound['decode_ms']:.2f} + resize {bound['resize_ms']:.2f} + inference "
                      f"{bound['infer_ms']:.2f} (benchmark_app, batch {bound['infer_batch']}) + parse "
                      f"{bound['parse_ms']:.2f}); engine at {fmt(d.get('engine_of_bound'), 2, '×')} of it")
        if "target_streams" in bound:
            target, allowance = bound["target_streams"], bound["target_allowance_ms"]
            verdict = (f"leaves any pipeline {allowance:.2f} core-ms per frame beyond that work, on fully busy cores"
                       if allowance >= 0 else "is past the bound: no pipeline can sustain it")
            console.print(f"{bound['target_fraction']:.0%} of the bound is {target} streams, which {verdict}")
        beyond = ", ".join(f"{v} {fmt(ms, 2)}" for v, ms in (d.get("beyond_work_ms") or {}).items()
                           if ms is not None)
        if beyond:
            console.print(f"CPU per frame beyond that work at the count each sustained (core-ms): {beyond}")
    if "budget" in d["variants"]:      # apart: its detector sees a fraction of the frames
        console.print(f"[bold]with a detection budget of {d['detect_fps']:g} detections/s per stream[/bold] "
                      f"(tracking fills the frames between): {d['variants']['budget']['sustained_streams']} "
                      f"streams ({fmt(d['ratios']['budget/engine'], 2, '×')} the every-frame engine's)")


def main(args: argparse.Namespace) -> int:
    return Bench(args).run()
