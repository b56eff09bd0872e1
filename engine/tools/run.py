"""`ovstream run`: load a config, apply command-line overrides, supervise the run, report.

Exit codes: 0 every frame processed; 1 the run finished but some frames are error records (or a
stage kept dying); 2 a user mistake found before start (config, model, device); 130 interrupted.

An inference worker is started first thing, before this module imports anything heavy: its
interpreter imports OpenVINO while this one reads the config and checks it, and compiles the
model while this one makes the pools and forks the other stages (engine/control/launch.py). Nearly every
run has one; one not needed is killed unseen.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from typing import TYPE_CHECKING

from engine.config.options import HINTS, overrides_from
from engine.control.launch import Launcher
from engine.core.errors import EXIT_FAILED, ConfigError
from engine.io.run_folder import OutputDir

if TYPE_CHECKING:
    from engine.config import RunConfig

HANDLES_SIGNALS = True      # the supervisor installs its handlers, then lets Ctrl-C / SIGTERM through


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="TOML config (default: the bundled configs/default.toml; "
                                                  "bundled ones by name from any folder: configs/mnist.toml)")
    parser.add_argument("--source", action="append",
                        help="image folder, video file, camera index or rtsp/http URL; repeat for several "
                             "streams; a glob ('clips/*.mp4') is one stream per file")
    parser.add_argument("--model", help="registry name (bundled models/models.toml, or OVSTREAM_HOME's) or model file")
    parser.add_argument("--adapter", help="output adapter when --model is a file")
    parser.add_argument("--device", action="append", help="OpenVINO device; repeat for several workers")
    parser.add_argument("--nireq", type=int, help="async infer requests per worker (0: device optimum)")
    parser.add_argument("--batch", type=int, help="frames per inference request (0: 4 when the graph takes it and "
                                                   "every source is a file or there are 8 streams or more, else 1)")
    parser.add_argument("--streams", type=int, help="OpenVINO streams per device (0: from the hint)")
    parser.add_argument("--hint", choices=HINTS)
    parser.add_argument("--loop", type=int, help="play every file stream this many times")
    parser.add_argument("--decoders", type=int, help="decoder processes (0: from streams and cores)")
    parser.add_argument("--output", help="output folder (results.jsonl, report.json, logs/)")
    parser.add_argument("--annotate", action="store_true", help="also write annotated images")
    parser.add_argument("--video", action="store_true", help="also write an annotated video")
    parser.add_argument("--duration", type=float, default=0.0, metavar="SECONDS",
                        help="end the run after this long (live streams otherwise run until Ctrl-C)")
    parser.add_argument("--no-dashboard", action="store_true", help="plain progress lines instead of the live view")
    parser.add_argument("--metrics-port", type=int, metavar="PORT",
                        help="serve Prometheus /metrics on this port (127.0.0.1 unless [metrics] host)")
    parser.add_argument("--cluster", metavar="ADDRESS",
                        help="spread the streams over a Ray cluster: auto (the local one), HOST:PORT or "
                             "ray://HOST:PORT (needs the cluster extra)")


def main(args: argparse.Namespace) -> int:
    with Launcher() as launcher:
        launcher.prestart(1)
        from engine.config import load_config  # pydantic, numpy: while the worker imports OpenVINO
        from engine.model.detect import detect_model  # light: OpenVINO only when it reads a file

        cfg = load_config(args.config, overrides_from(args), detect=detect_model)
        if args.loop is not None:                  # every stream, also those a config lists (checked as
            for src in cfg.sources:                # [source] loop with the other overrides)
                src.loop = args.loop
        if args.duration < 0:
            raise ConfigError(f"--duration must be >= 0, not {args.duration:g}")
        if cfg.cluster.address:                    # Ray is imported only here; the engines start their own
            launcher.close()
            from engine.cluster.driver import run_cluster
            return run_cluster(cfg, cfg.cluster.address, duration_s=args.duration)
        launcher.prestart(len(cfg.inference.devices))
        return _run(cfg, args, launcher)


def _run(cfg: RunConfig, args: argparse.Namespace, launcher: Launcher) -> int:
    from rich.console import Console  # imported after the inference workers were started

    from engine.control.supervisor import Supervisor
    from engine.observe.dashboard import render_summary

    console = Console(stderr=False)
    supervisor = Supervisor(cfg, duration_s=args.duration, launcher=launcher)      # the pre-flight checks
    exporter = supervisor.exporter
    try:
        with OutputDir(cfg.output.dir, reserve_report=cfg.output.report) as output:
            if exporter is not None:
                print(f"ovstream run: metrics on {exporter.url}", file=sys.stderr, flush=True)
            outcome = supervisor.run()
            message, code = outcome.message, outcome.exit_code
            if outcome.report:
                console.print(render_summary(outcome.report))
                if cfg.output.report:
                    try:
                        path = output.write_report(outcome.report)
                        console.print(f"report: {path}   results: {output.path / 'results.jsonl'}")
                    except OSError as exc:
                        message = message or f"cannot write {output.path / 'report.json'}: {exc.strerror}"
                        code = max(code, EXIT_FAILED)
        if message:
            print(f"ovstream run: {message}", file=sys.stderr)
        if exporter is not None and cfg.metrics.linger_s > 0 and not supervisor.interrupted:
            _linger(cfg.metrics.linger_s)
    finally:
        if exporter is not None:
            exporter.close()
    return code


def _linger(seconds: float) -> None:
    """Keep /metrics up after the run so the final figures get scraped; Ctrl-C / SIGTERM end it
    early without changing the run's exit code."""
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    print(f"ovstream run: serving the final metrics for {seconds:g} s", file=sys.stderr, flush=True)
    done.wait(seconds)

