"""What ``ovstream serve`` serves: a persistent :class:`~engine.api.pipeline.Pipeline` in its own thread, the list
of its open streams (kept in ``streams.json``), the live view and the snapshot for ``/metrics``; the HTTP
layer (:mod:`engine.api.http_app`) only maps requests onto it.

At start the streams are those saved by the last service in ``<output dir>/streams.json`` (an entry
the uri policy now refuses is left out, with a warning), else the config's. The engine must start
with at least one stream (its pools are sized by them), so a saved list that is empty starts the
config's streams again.

A pipeline takes at most ``MAX_STREAMS`` streams over its life (stream ids are not reused): an add
beyond that first restarts the pipeline with the open streams (:meth:`ControlPlane.recycle`; a few
seconds without frames, file streams start again), which also frees the names of removed streams.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from engine.api.engine_thread import EngineThread
from engine.api.live import LiveView, ViewFigures
from engine.api.pipeline import Pipeline
from engine.api.streams_state import FILE, StreamsState
from engine.api.uri_policy import UriRefused, check_uri
from engine.config import MAX_STREAMS, RunConfig, redact_uri
from engine.core.errors import ConfigError
from engine.core.results import FrameResult
from engine.io.run_folder import OutputDir
from engine.observe.exporter import SnapshotCollector

log = logging.getLogger(__name__)

TOKEN_ENV = "OVSTREAM_TOKEN"
LOOPBACK = ("127.0.0.1", "::1", "localhost")


class ApiError(Exception):
    """A request the service refuses: an HTTP status and one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def read_token(cfg: RunConfig) -> str:
    """The bearer token: ``$OVSTREAM_TOKEN``, else the first line of ``[serve] token_file``, else none.
    Serving beyond loopback without one is a mistake (one line)."""
    token = os.environ.get(TOKEN_ENV, "").strip()
    if not token and cfg.serve.token_file:
        try:
            lines = Path(cfg.serve.token_file).read_text(encoding="utf-8").strip().splitlines()
            token = lines[0].strip() if lines else ""
        except OSError as exc:
            raise ConfigError(f"[serve] token_file {cfg.serve.token_file}: {exc.strerror or exc}") from None
        if not token:
            raise ConfigError(f"[serve] token_file {cfg.serve.token_file} is empty")
    if not token and cfg.serve.host not in LOOPBACK:
        raise ConfigError(f"[serve] host = {cfg.serve.host} is reachable from other machines: set a token "
                          f"([serve] token_file or ${TOKEN_ENV})")
    return token


def keep_previous(folder: Path) -> None:
    """A run truncates ``results.jsonl`` and rewrites ``report.json``; a service that starts again
    (restarted, or its pipeline recycled) keeps the last ones as ``results.N.jsonl`` / ``report.N.json``."""
    names = (("results", ".jsonl"), ("report", ".json"))
    with OutputDir(folder, reserve_report=False):      # never while another run owns the folder (one line)
        n = 1
        while any((folder / f"{stem}.{n}{suffix}").exists() for stem, suffix in names):
            n += 1
        for stem, suffix in names:
            path = folder / f"{stem}{suffix}"
            if path.is_file() and path.stat().st_size:
                path.rename(folder / f"{stem}.{n}{suffix}")


class ControlPlane:
    """The service's pipeline and streams; :meth:`start` and :meth:`stop` it around the HTTP server."""

    def __init__(self, cfg: RunConfig, token: str = "") -> None:
        self.cfg = cfg
        self.token = token
        cfg.output.view_fps = cfg.serve.view_fps
        self.streams = StreamsState(Path(cfg.output.dir) / FILE if cfg.serve.state else None)
        self._resume(self.streams.load())
        self.collector = SnapshotCollector()
        self.recycles = 0
        self._make_engine()
        self.live: LiveView | None = None

    def _make_engine(self) -> None:
        self.pipeline = Pipeline(self.cfg, max_streams=self.cfg.serve.max_streams, persistent=True,
                                 view=self.cfg.serve.view_fps > 0)
        self.engine = EngineThread(self.pipeline, self.collector.publish)

    def _resume(self, saved: list[dict] | None) -> None:
        """The config's streams replaced by the saved ones (those the uri policy still allows)."""
        if saved:
            kept = []
            for entry in saved:
                try:
                    check_uri(str(entry.get("uri", "")), self.cfg.serve)
                except UriRefused as exc:
                    log.warning("saved stream %s left out: %s", entry.get("name"), exc)
                    continue
                kept.append(entry)
            if kept:
                data = self.cfg.to_dict()
                data["sources"] = kept
                self.cfg.sources = RunConfig.from_dict(data, origin=str(self.streams.path)).sources
        if len(self.cfg.sources) > self.cfg.serve.max_streams:
            raise ConfigError(f"{len(self.cfg.sources)} streams, more than [serve] max_streams = "
                              f"{self.cfg.serve.max_streams}")

    def start(self) -> None:
        keep_previous(Path(self.cfg.output.dir))
        self.engine.start()
        # resolved (each with its name); a new dict swapped in whole, as requests read it from other threads
        self.streams.entries = {src.name: {k: v for k, v in src.to_dict().items() if k != "start"}
                                for src in self.pipeline.config.sources}
        self.streams.put_all()
        if self.pipeline.view_endpoint:
            self.live = LiveView(self.pipeline.view_endpoint)

    def stop(self) -> None:
        """Every stream drains and every process ends."""
        if self.live is not None:
            self.live.close()
            self.live = None
        self.engine.stop()

    def stopping(self) -> None:
        """The server has been told to stop: live views end, so it need not cut them off."""
        if self.live is not None:
            self.live.end_viewers()

    @property
    def life_left(self) -> int:
        """Streams the pipeline can still take over its life."""
        return MAX_STREAMS - len(self.pipeline.streams)

    def recycle(self, entry: dict) -> str:
        """A new pipeline with the open streams and ``entry`` (see the module docstring); the new
        stream's name. If it cannot start with ``entry``, it starts without it and raises why."""
        log.warning("the pipeline has taken %d streams over its life, the most it can: restarting it with the "
                    "%d open ones", len(self.pipeline.streams), len(self.streams.entries))
        self.stop()
        self.recycles += 1
        kept = list(self.streams.entries.values())
        try:
            self._restart([*kept, entry])
        except ConfigError:
            if not kept:
                raise
            self._restart(kept)
            raise
        names = {e["name"] for e in kept}
        return next(name for name in self.pipeline.streams if name not in names)

    def _restart(self, entries: list[dict]) -> None:
        data = self.cfg.to_dict()
        data["sources"] = entries
        self.cfg.sources = RunConfig.from_dict(data, origin="the open streams").sources
        self._make_engine()
        self.start()

    # ---- requests -------------------------------------------------------------------------------
    def check_entry(self, body: Any) -> dict:
        """A ``POST /streams`` body as ``Pipeline.add_source`` takes it, or an :class:`ApiError`."""
        if not isinstance(body, dict):
            raise ApiError(422, "the body must be a JSON object: the keys of a [[sources]] entry")
        try:
            src = RunConfig.from_dict({"source": self.cfg.source.to_dict(), "sources": [body]},
                                      origin="POST /streams").sources[0]
            uri = check_uri(src.uri, self.cfg.serve)
        except UriRefused as exc:
            raise ApiError(403, str(exc)) from None
        except ConfigError as exc:
            raise ApiError(422, str(exc)) from None
        fixed = sorted(key for key in ("track", "tracker", "detect_every") if key in body)
        if fixed:      # the running stages take a stream's tracking settings from the config they started with
            raise ApiError(422, f"POST /streams: {fixed[0]} cannot be set for a stream added to a running "
                                f"service; set it in the config's [[sources]] (or [source]) instead")
        if src.name and src.name in self.streams.entries:
            raise ApiError(409, f"stream name '{src.name}' is taken")
        if len(self.streams.entries) >= self.cfg.serve.max_streams:
            raise ApiError(409, f"{len(self.streams.entries)} streams are open, the most [serve] max_streams "
                                "allows: remove one first")
        return {**body, "uri": uri}

    def forget(self, name: str) -> None:
        """A removed stream leaves the list (and streams.json); what is kept of it goes."""
        self.streams.drop(name)
        self.engine.latest.pop(name, None)
        if self.live is not None:
            self.live.figures.pop(name, None)

    def require(self, name: str) -> None:
        if name not in self.streams.entries:
            raise ApiError(404, f"no open stream named '{name}'")

    def describe(self, name: str) -> dict:
        """A stream's entry, its row of the latest snapshot, its latest result's size and view figures."""
        snapshot = self.engine.snapshot
        row = next((r.to_dict() for r in (snapshot.streams if snapshot else ()) if r.name == name), {})
        entry = dict(self.streams.entries.get(name, {}))
        for d in (entry, row):
            if "uri" in d:
                d["uri"] = redact_uri(d["uri"])
        out: dict[str, Any] = {"name": name, "entry": entry, **row}
        latest = self.engine.latest.get(name)
        if latest is not None:
            out["last_frame"] = self._last_frame(latest)
        if self.live is not None:
            out["view"] = vars(self.live.figures.get(name, ViewFigures()))
        return out

    def status(self) -> dict:
        """The latest snapshot as report.json has it, and the service's own figures."""
        snapshot = self.engine.snapshot
        out: dict[str, Any] = snapshot.to_dict() if snapshot is not None else {"state": "starting"}
        for row in out.get("streams", {}).values():
            row["uri"] = redact_uri(row["uri"])
        names, latest = list(self.streams.entries), self.engine.latest.copy()    # (copies: other threads write)
        out["service"] = {"open_streams": names, "max_streams": self.cfg.serve.max_streams,
                          "recycles": self.recycles,
                          "error": self.engine.error, "ready": not self.not_ready(),
                          "last_frame": {n: self._last_frame(latest[n]) for n in names if n in latest},
                          "view": {k: vars(v) for k, v in (self.live.figures.copy() if self.live else {}).items()}}
        return out

    @staticmethod
    def _last_frame(latest: FrameResult) -> dict:
        found = latest.detections or ()
        return {"frame_id": latest.frame_id, "detections": len(found), "status": latest.status,
                "tracks": sum(d.track_id is not None for d in found)}

    def not_ready(self) -> str:
        """Why the service is not ready ("": it is): the pipeline is down, a stage is, or an open stream failed."""
        if not self.engine.running:
            return self.engine.error or "the pipeline is not running"
        snapshot = self.engine.snapshot
        if snapshot is None:
            return "no snapshot yet"
        down = [p.name for p in snapshot.processes if not p.alive]
        if down:
            return f"stage(s) down: {', '.join(down)}"
        failed = [r.name for r in snapshot.streams if r.state == "failed" and r.name in self.streams.entries]
        return f"stream(s) failed: {', '.join(failed)}" if failed else ""
