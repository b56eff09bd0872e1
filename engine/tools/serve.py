"""``ovstream serve [CONFIG]``: the engine as a long-running service with an HTTP API (docs/serve.md).

The pipeline starts first (its one-line errors as ``ovstream run`` has them), then uvicorn serves
:func:`engine.api.http_app.create_app` on ``[serve] host:port`` (loopback by default) until SIGTERM or
Ctrl-C; then every stream drains, every process ends, and the command exits 0.
"""
from __future__ import annotations

import argparse
import signal
import socket
import sys
from collections.abc import Callable
from types import FrameType

import uvicorn

from engine.config import RunConfig, load_config
from engine.config.options import overrides_from
from engine.core.errors import ConfigError
from engine.model.detect import detect_model

HANDLES_SIGNALS = True      # uvicorn's handlers while it serves; before that, a stop ends the start-up
GRACE_S = 3                 # open requests (live views) are cut after this long at a stop


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="TOML config (default: configs/default.toml); its "
                        "[[sources]] are the first streams, its [serve] table the HTTP side")
    parser.add_argument("--host", help="address to serve on (default [serve] host: 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default [serve] port: 8080; 0: any free one)")
    parser.add_argument("--output", "-o", help="output folder (results, logs, streams.json)")
    parser.add_argument("--model", help="model: a registry name or a model file")
    parser.add_argument("--device", action="append", help="inference device (repeat for several)")


def _config(args: argparse.Namespace) -> RunConfig:
    values: dict[str, object] = {key: None for key in ("source", "adapter", "nireq", "batch", "streams", "hint",
                                                       "loop", "decoders", "metrics_port")}
    values.update(model=args.model, device=args.device, output=args.output, annotate=False, video=False,
                  no_dashboard=True, cluster=None)
    overrides = overrides_from(argparse.Namespace(**values))
    overrides.setdefault("dashboard", {})["enabled"] = False
    serve = overrides.setdefault("serve", {})
    if args.host is not None:
        serve["host"] = args.host
    if args.port is not None:
        serve["port"] = args.port
    return load_config(args.config, overrides, detect=detect_model)


class _Server(uvicorn.Server):
    """uvicorn's server, which also tells ``on_stop`` when a signal stops it."""

    def __init__(self, config: uvicorn.Config, on_stop: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_stop = on_stop

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._on_stop()
        super().handle_exit(sig, frame)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"[serve] cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def main(args: argparse.Namespace) -> int:

    from engine.api.control_plane import ControlPlane, read_token
    from engine.api.http_app import create_app

    cfg = _config(args)
    token = read_token(cfg)
    sock = _listen(cfg.serve.host, cfg.serve.port)
    for sig in (signal.SIGINT, signal.SIGTERM):        # a stop while the pipeline starts: it is closed
        signal.signal(sig, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    plane = ControlPlane(cfg, token)
    try:
        plane.start()
        host, port = sock.getsockname()[:2]
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        print(f"ovstream serve: {url}/ (API: {url}/docs, {len(plane.streams.entries)} streams)",
              file=sys.stderr, flush=True)
        for sig in (signal.SIGINT, signal.SIGTERM):    # uvicorn's own handlers stop it; once it has
            signal.signal(sig, lambda *_: None)        # stopped, the signal it passes on is done with
        server = _Server(uvicorn.Config(create_app(plane), log_level="warning", access_log=False,
                                        timeout_graceful_shutdown=GRACE_S, lifespan="off"), plane.stopping)
        server.run(sockets=[sock])
    finally:
        plane.stop()
        sock.close()
    if plane.engine.error and plane.engine.error != "the service is stopping":
        print(f"ovstream serve: the pipeline stopped: {plane.engine.error}", file=sys.stderr)
        return 1
    return 0
